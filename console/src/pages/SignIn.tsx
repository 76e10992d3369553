import { useState, type FormEvent } from "react";
import { signIn, signUp } from "../api";
import { Button, Card, ErrorText, Field, Input } from "../ui";

export function SignIn() {
  const [mode, setMode] = useState<"in" | "up">("in");
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await (mode === "in" ? signIn : signUp)(email, password);
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="mx-auto mt-16 max-w-sm p-4">
      <h1 className="mb-4 text-center text-2xl font-semibold text-indigo-700">BackSaas</h1>
      <Card title={mode === "in" ? "Sign in" : "Create an account"}>
        <form onSubmit={submit} className="space-y-3">
          <Field label="Email">
            <Input type="email" autoComplete="email" required value={email} onChange={(e) => setEmail(e.target.value)} />
          </Field>
          <Field label="Password" hint={mode === "up" ? "At least 8 characters" : undefined}>
            <Input
              type="password"
              autoComplete={mode === "in" ? "current-password" : "new-password"}
              required
              value={password}
              onChange={(e) => setPassword(e.target.value)}
            />
          </Field>
          <ErrorText error={error} />
          <Button type="submit" busy={busy} className="w-full justify-center">
            {mode === "in" ? "Sign in" : "Sign up"}
          </Button>
        </form>
        <p className="mt-3 text-center text-sm">
          <button type="button" className="text-indigo-700 underline" onClick={() => setMode(mode === "in" ? "up" : "in")}>
            {mode === "in" ? "No account yet? Sign up" : "Have an account? Sign in"}
          </button>
        </p>
      </Card>
    </div>
  );
}
