"""The PostgREST-compatible dialect: query strings and Prefer headers in, plans and responses out."""
