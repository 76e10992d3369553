"""End-user identity: passwords, access-token signing, sessions with rotating refresh tokens, and the
GoTrue (Supabase Auth) protocol every tenant serves at `/auth/v1`."""
