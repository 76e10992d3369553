"""Model -> tables in a tenant's Postgres schema; the migration planner and the deploy that applies it."""
