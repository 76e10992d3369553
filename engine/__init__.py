"""BackSaas engine: schema -> storage -> APIs. A library; it never imports the gateway."""
