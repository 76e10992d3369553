import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { callFunction, PLATFORM, query, request, shareSessionWithGraphiql, tenantBase, type Tenant } from "../../api";
import { Button, Card, Code, ErrorText, Field, Input, Select, Spinner } from "../../ui";

interface Key {
  id: string;
  name: string;
  role: string;
  prefix: string;
  revoked_at: string | null;
  expires_at: string | null;
  last_used_at: string | null;
}

const STEPS: [string, string][] = [
  ["schema_deployed", "Deploy a schema"],
  ["first_user", "Get a first end user"],
  ["first_api_call", "Make a first API call"],
  ["plan_chosen", "Choose a plan"],
];

export function Overview({ tenant }: { tenant: Tenant }) {
  const base = `${location.origin}${tenantBase(tenant.slug)}`;
  return (
    <div className="grid gap-4 lg:grid-cols-2">
      <Card title="Endpoints">
        <dl className="space-y-1 text-sm">
          {[
            ["REST", `${base}/rest/v1`],
            ["GraphQL", `${base}/graphql/v1`],
            ["Auth", `${base}/auth/v1`],
            ["Functions", `${base}/functions/v1`],
          ].map(([label, url]) => (
            <div key={label} className="flex flex-wrap gap-2">
              <dt className="w-20 font-medium">{label}</dt>
              <dd>
                <code className="break-all">{url}</code>
              </dd>
            </div>
          ))}
        </dl>
        <p className="mt-3 text-sm">
          Explore as yourself:{" "}
          <a className="text-indigo-700 underline" href={`${base}/graphql/v1`} target="_blank" rel="noreferrer" onClick={shareSessionWithGraphiql}>
            GraphiQL
          </a>{" "}
          ·{" "}
          <a className="text-indigo-700 underline" href={`${base}/rest/v1/`} target="_blank" rel="noreferrer">
            OpenAPI explorer
          </a>
        </p>
      </Card>
      <Card title="Getting started">
        <ul className="space-y-1 text-sm">
          {STEPS.map(([step, label]) => (
            <li key={step} className="flex items-center gap-2">
              <span aria-hidden>{tenant.onboarding[step] ? "✓" : "○"}</span>
              <span className={tenant.onboarding[step] ? "text-slate-500 line-through" : ""}>{label}</span>
            </li>
          ))}
        </ul>
      </Card>
      <Keys tenant={tenant} />
      <Snippets base={base} />
    </div>
  );
}

function Keys({ tenant }: { tenant: Tenant }) {
  const client = useQueryClient();
  const [revealed, setRevealed] = useState<Record<string, string> | null>(null);
  const [name, setName] = useState("");
  const [role, setRole] = useState("anon");
  const keys = useQuery({
    queryKey: ["keys", tenant.id, tenant.status], // made while provisioning: read again once it ends
    queryFn: () =>
      request<Key[]>(
        `${PLATFORM}/rest/v1/api_keys${query({ select: "id,name,role,prefix,revoked_at,expires_at,last_used_at", tenant_id: `eq.${tenant.id}`, order: "name" })}`,
      ),
  });
  const reveal = useMutation({
    mutationFn: () => callFunction<{ keys: Record<string, string> }>("reveal_keys", { tenant: tenant.slug }),
    onSuccess: (answer) => {
      setRevealed(answer.keys);
      client.invalidateQueries({ queryKey: ["keys", tenant.id] });
    },
  });
  const create = useMutation({
    mutationFn: () => callFunction<{ name: string; key: string }>("create_key", { tenant: tenant.slug, name, role }),
    onSuccess: (made) => {
      setRevealed({ [made.name]: made.key });
      setName("");
      client.invalidateQueries({ queryKey: ["keys", tenant.id] });
    },
  });
  const revoke = useMutation({
    mutationFn: (key: string) => callFunction("revoke_key", { tenant: tenant.slug, name: key }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["keys", tenant.id] }),
  });
  return (
    <Card title="API keys" actions={<Button variant="secondary" busy={reveal.isPending} onClick={() => reveal.mutate()}>Reveal the first keys</Button>}>
      {revealed && (
        <div className="mb-3 rounded-md border border-amber-300 bg-amber-50 p-2 text-sm" data-testid="revealed-keys">
          <p className="mb-1 font-medium">Copy these now: they are shown once.</p>
          {Object.entries(revealed).map(([label, key]) => (
            <p key={label}>
              {label}: <code className="break-all">{key}</code>
            </p>
          ))}
        </div>
      )}
      <ErrorText error={keys.error ?? reveal.error ?? create.error ?? revoke.error} />
      {keys.isPending ? (
        <Spinner />
      ) : (
        <table className="w-full text-left text-sm" data-testid="keys">
          <thead className="text-xs uppercase text-slate-500">
            <tr>
              <th>Name</th>
              <th>Role</th>
              <th>Key</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {keys.data?.map((k) => (
              <tr key={k.id} className="border-t border-slate-100">
                <td className="py-1">{k.name}</td>
                <td>{k.role}</td>
                <td>
                  <code>{k.prefix}…</code>
                </td>
                <td className="text-right">
                  {k.revoked_at ? (
                    <span className="text-xs text-slate-500">revoked</span>
                  ) : (
                    <Button variant="ghost" busy={revoke.isPending && revoke.variables === k.name} onClick={() => revoke.mutate(k.name)}>
                      Revoke
                    </Button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <form
        className="mt-3 flex flex-wrap items-end gap-2"
        onSubmit={(e) => {
          e.preventDefault();
          create.mutate();
        }}
      >
        <Field label="New key's name">
          <Input required value={name} onChange={(e) => setName(e.target.value)} />
        </Field>
        <Field label="Role">
          <Select value={role} onChange={(e) => setRole(e.target.value)}>
            <option value="anon">anon</option>
            <option value="authenticated">authenticated</option>
            <option value="service">service</option>
          </Select>
        </Field>
        <Button type="submit" busy={create.isPending}>
          Create key
        </Button>
      </form>
    </Card>
  );
}

function Snippets({ base }: { base: string }) {
  const [which, setWhich] = useState<"curl" | "js" | "py">("curl");
  const text = {
    curl: `curl '${base}/rest/v1/<entity>?select=*' \\\n  -H "apikey: $ANON_KEY"`,
    js: `import { createClient } from "@supabase/supabase-js";\n\nconst supabase = createClient("${base}", ANON_KEY);\nconst { data, error } = await supabase.from("<entity>").select("*");`,
    py: `from supabase import create_client\n\nsupabase = create_client("${base}", ANON_KEY)\nrows = supabase.table("<entity>").select("*").execute().data`,
  }[which];
  return (
    <Card
      title="Use it from your app"
      actions={
        <Select aria-label="Snippet language" value={which} onChange={(e) => setWhich(e.target.value as typeof which)}>
          <option value="curl">curl</option>
          <option value="js">supabase-js</option>
          <option value="py">supabase-py</option>
        </Select>
      }
    >
      <Code>{text}</Code>
    </Card>
  );
}
