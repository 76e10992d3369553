"""BackSaas gateway: the HTTP edge (tenant resolution, routing, errors) and the `backsaas` CLI."""
