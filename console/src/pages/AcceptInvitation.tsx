import { useState, type FormEvent } from "react";
import { useLocation, useSearch } from "wouter";
import { callFunction, session, signIn } from "../api";
import { Button, Card, ErrorText, Field, Input } from "../ui";

/** The page an invitation link opens: the invitee sets a password (or is signed in already) and joins. */
export function AcceptInvitation() {
  const token = new URLSearchParams(useSearch()).get("token") ?? "";
  const [, navigate] = useLocation();
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const signedIn = session() !== null;

  async function accept(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const joined = await callFunction<{ tenant: string; email: string }>("accept_invitation", signedIn ? { token } : { token, password });
      if (!signedIn) await signIn(joined.email, password);
      navigate(`/t/${joined.tenant}`);
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="mx-auto mt-16 max-w-sm p-4">
      <Card title="Join a tenant">
        <form onSubmit={accept} className="space-y-3">
          {!signedIn && (
            <Field label="Choose a password (or your current one)" hint="At least 8 characters">
              <Input type="password" autoComplete="new-password" required value={password} onChange={(e) => setPassword(e.target.value)} />
            </Field>
          )}
          <ErrorText error={error} />
          <Button type="submit" busy={busy} disabled={!token}>
            Accept the invitation
          </Button>
        </form>
      </Card>
    </div>
  );
}
