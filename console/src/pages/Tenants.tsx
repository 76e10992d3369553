import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { Link, useLocation } from "wouter";
import { callFunction, PLATFORM, query, request, TENANT_COLUMNS, type Tenant } from "../api";
import { Badge, Button, Card, Dialog, Empty, ErrorText, Field, Input, Select, Spinner, TextArea } from "../ui";

const SLUG = /^[a-z][a-z0-9-]*$/;

export function slugProblem(slug: string): string | undefined {
  if (!slug) return undefined;
  if (slug.length > 40) return "at most 40 characters";
  if (!SLUG.test(slug)) return "lowercase letters, digits and '-', starting with a letter";
  return undefined;
}

export function useTenants() {
  return useQuery({
    queryKey: ["tenants"],
    queryFn: () => request<Tenant[]>(`${PLATFORM}/rest/v1/tenants${query({ select: TENANT_COLUMNS, order: "created_at.desc" })}`),
    // while one is provisioning, watch it reach active or failed
    refetchInterval: (q) => (q.state.data?.some((t) => t.status === "pending") ? 1000 : false),
  });
}

export function Tenants() {
  const tenants = useTenants();
  const [creating, setCreating] = useState(false);
  return (
    <div className="space-y-4">
      <Card title="Your tenants" actions={<Button onClick={() => setCreating(true)}>New tenant</Button>}>
        {tenants.isPending ? (
          <Spinner />
        ) : tenants.error ? (
          <ErrorText error={tenants.error} />
        ) : tenants.data.length === 0 ? (
          <Empty>No tenant yet. Create one to get a REST and GraphQL API from a schema.</Empty>
        ) : (
          <table className="w-full text-left text-sm">
            <thead className="text-xs uppercase text-slate-500">
              <tr>
                <th className="py-1">Tenant</th>
                <th>Status</th>
                <th>Plan</th>
                <th className="hidden sm:table-cell">API calls this month</th>
                <th className="hidden sm:table-cell">Created</th>
              </tr>
            </thead>
            <tbody>
              {tenants.data.map((t) => (
                <tr key={t.id} className="border-t border-slate-100" data-tenant={t.slug}>
                  <td className="py-2">
                    <Link href={`/t/${t.slug}`} className="font-medium text-indigo-700">
                      {t.name}
                    </Link>{" "}
                    <span className="text-slate-500">{t.slug}</span>
                  </td>
                  <td>
                    <Badge value={t.status} />
                    {t.status === "failed" && t.provisioning.failed_step && (
                      <span className="ml-2 text-xs text-rose-700">at {t.provisioning.failed_step}</span>
                    )}
                  </td>
                  <td>{t.plan}</td>
                  <td className="hidden sm:table-cell">{t.status === "active" && <CallsThisPeriod slug={t.slug} />}</td>
                  <td className="hidden sm:table-cell">{new Date(t.created_at).toLocaleString()}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Card>
      <CreateTenant open={creating} onOpenChange={setCreating} />
    </div>
  );
}

/** The tenant's API calls of the current period (platform `usage`), against its plan's monthly limit. */
function CallsThisPeriod({ slug }: { slug: string }) {
  const usage = useQuery({
    queryKey: ["usage", slug, "period"],
    queryFn: () => callFunction<{ quotas: Record<string, { used: number; limit: number | null }> }>("usage", { tenant: slug, days: 1 }),
    retry: false,
  });
  const requests = usage.data?.quotas.requests_per_month;
  if (!requests) return null;
  return (
    <span>
      {requests.used.toLocaleString()}
      {requests.limit !== null && <span className="text-slate-500"> / {requests.limit.toLocaleString()}</span>}
    </span>
  );
}

function CreateTenant({ open, onOpenChange }: { open: boolean; onOpenChange: (open: boolean) => void }) {
  const client = useQueryClient();
  const [, navigate] = useLocation();
  const [slug, setSlug] = useState("");
  const [name, setName] = useState("");
  const [plan, setPlan] = useState("free");
  const [schema, setSchema] = useState("");
  const plans = useQuery({
    queryKey: ["plans"],
    queryFn: () => request<{ code: string; name: string }[]>(`${PLATFORM}/rest/v1/plans${query({ select: "code,name", active: "is.true" })}`),
  });
  const create = useMutation({
    mutationFn: () =>
      request<Tenant>(`${PLATFORM}/rest/v1/tenants`, {
        body: { slug, name: name || slug, plan, ...(schema.trim() ? { initial_schema: schema } : {}) },
        headers: { Prefer: "return=representation", Accept: "application/vnd.pgrst.object+json" },
      }),
    onSuccess: async (tenant) => {
      await client.invalidateQueries({ queryKey: ["tenants"] });
      onOpenChange(false);
      navigate(`/t/${tenant.slug}`);
    },
  });
  const problem = slugProblem(slug);

  function submit(event: FormEvent) {
    event.preventDefault();
    if (!problem) create.mutate();
  }

  return (
    <Dialog open={open} onOpenChange={onOpenChange} title="New tenant">
      <form onSubmit={submit} className="space-y-3">
        <Field label="Slug" error={problem} hint={slug && !problem ? `its API: /api/tenants/${slug}` : "used in its URLs"}>
          <Input required value={slug} onChange={(e) => setSlug(e.target.value.trim())} aria-invalid={Boolean(problem)} />
        </Field>
        <Field label="Name">
          <Input value={name} onChange={(e) => setName(e.target.value)} placeholder={slug} />
        </Field>
        <Field label="Plan">
          <Select value={plan} onChange={(e) => setPlan(e.target.value)}>
            {(plans.data ?? [{ code: "free", name: "Free" }]).map((p) => (
              <option key={p.code} value={p.code}>
                {p.name}
              </option>
            ))}
          </Select>
        </Field>
        <Field label="Initial schema (optional YAML)" hint="You can also write it in the schema editor afterwards.">
          <TextArea rows={5} value={schema} onChange={(e) => setSchema(e.target.value)} />
        </Field>
        <ErrorText error={create.error} />
        <div className="flex justify-end gap-2">
          <Button type="button" variant="secondary" onClick={() => onOpenChange(false)}>
            Cancel
          </Button>
          <Button type="submit" busy={create.isPending} disabled={!slug || Boolean(problem)}>
            Create
          </Button>
        </div>
      </form>
    </Dialog>
  );
}
