import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Link } from "wouter";
import { callFunction, PLATFORM, query, request, TENANT_COLUMNS, type Tenant } from "../api";
import { Badge, Button, Card, Dialog, ErrorText, Field, Input, Spinner, TextArea } from "../ui";

interface Dashboard {
  period: { from: string; to: string };
  tenants: { by_status: Record<string, number>; by_plan: Record<string, number>; total: number };
  revenue: { mrr_cents: Record<string, number>; arr_cents: Record<string, number> };
  growth: { new_tenants: number; churned_tenants: number };
  usage: { api_calls: number; storage_bytes: number; top_tenants: { tenant: string; api_calls: number; storage_bytes: number }[] };
  health: { tenant: string; requests: number; error_rate: number; p95_ms: number | null }[];
}

const money = (cents: Record<string, number>) =>
  Object.entries(cents)
    .map(([currency, value]) => (value / 100).toLocaleString(undefined, { style: "currency", currency: currency.toUpperCase() }))
    .join(" + ") || "0";

/** The operator's view (platform admins): the dashboard's figures and every tenant's lifecycle. */
export default function Platform() {
  const dashboard = useQuery({ queryKey: ["dashboard"], queryFn: () => callFunction<Dashboard>("dashboard", {}) });
  return (
    <div className="space-y-4">
      {dashboard.isPending ? (
        <Spinner />
      ) : dashboard.error ? (
        <ErrorText error={dashboard.error} />
      ) : (
        <div className="grid gap-4 sm:grid-cols-2 lg:grid-cols-4" data-testid="dashboard">
          <Figure label="Tenants" value={String(dashboard.data.tenants.total)} note={Object.entries(dashboard.data.tenants.by_status).map(([s, n]) => `${n} ${s}`).join(", ")} />
          <Figure label="MRR" value={money(dashboard.data.revenue.mrr_cents)} note={`ARR ${money(dashboard.data.revenue.arr_cents)}`} />
          <Figure label="New / churned" value={`${dashboard.data.growth.new_tenants} / ${dashboard.data.growth.churned_tenants}`} note={`${dashboard.data.period.from} to ${dashboard.data.period.to}`} />
          <Figure label="API calls" value={dashboard.data.usage.api_calls.toLocaleString()} note={`${(dashboard.data.usage.storage_bytes / 1e6).toFixed(1)} MB stored`} />
        </div>
      )}
      {dashboard.data && dashboard.data.health.length > 0 && (
        <Card title="Tenants' health">
          <table className="w-full text-left text-sm">
            <thead className="text-xs uppercase text-slate-500">
              <tr>
                <th>Tenant</th>
                <th>Requests</th>
                <th>Error rate</th>
                <th>p95</th>
              </tr>
            </thead>
            <tbody>
              {dashboard.data.health.map((h) => (
                <tr key={h.tenant} className="border-t border-slate-100">
                  <td className="py-1">{h.tenant}</td>
                  <td>{h.requests.toLocaleString()}</td>
                  <td>{(h.error_rate * 100).toFixed(2)}%</td>
                  <td>{h.p95_ms === null ? "" : `${h.p95_ms} ms`}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </Card>
      )}
      <Plans />
      <AllTenants />
    </div>
  );
}

function Figure({ label, value, note }: { label: string; value: string; note: string }) {
  return (
    <section className="rounded-lg border border-slate-200 bg-white p-4 shadow-sm">
      <p className="text-xs uppercase text-slate-500">{label}</p>
      <p className="text-2xl font-semibold">{value}</p>
      <p className="text-xs text-slate-500">{note}</p>
    </section>
  );
}

function AllTenants() {
  const client = useQueryClient();
  const [suspending, setSuspending] = useState<Tenant | null>(null);
  const [reason, setReason] = useState("");
  const tenants = useQuery({
    queryKey: ["all-tenants"],
    queryFn: () => request<Tenant[]>(`${PLATFORM}/rest/v1/tenants${query({ select: TENANT_COLUMNS, order: "created_at.desc" })}`),
  });
  const act = useMutation({
    mutationFn: ({ name, payload }: { name: string; payload: Record<string, unknown> }) => callFunction(name, payload),
    onSuccess: () => {
      setSuspending(null);
      setReason("");
      client.invalidateQueries({ queryKey: ["all-tenants"] });
      client.invalidateQueries({ queryKey: ["tenants"] });
      client.invalidateQueries({ queryKey: ["tenant"] });
    },
  });
  return (
    <Card title="All tenants">
      <ErrorText error={tenants.error ?? act.error} />
      {tenants.isPending ? (
        <Spinner />
      ) : (
        <table className="w-full text-left text-sm" data-testid="all-tenants">
          <tbody>
            {tenants.data?.map((t) => (
              <tr key={t.id} className="border-t border-slate-100" data-tenant={t.slug}>
                <td className="py-1">
                  <Link href={`/t/${t.slug}`} className="text-indigo-700">
                    {t.slug}
                  </Link>
                </td>
                <td>
                  <Badge value={t.status} />
                </td>
                <td>{t.plan}</td>
                <td className="text-right">
                  {t.status === "active" && (
                    <Button variant="ghost" onClick={() => setSuspending(t)}>
                      Suspend
                    </Button>
                  )}
                  {t.status === "suspended" && (
                    <Button variant="ghost" busy={act.isPending} onClick={() => act.mutate({ name: "activate_tenant", payload: { tenant: t.slug } })}>
                      Activate
                    </Button>
                  )}
                  {t.status === "deleted" && (
                    <Button variant="ghost" busy={act.isPending} onClick={() => act.mutate({ name: "restore_tenant", payload: { tenant: t.slug } })}>
                      Restore
                    </Button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <Dialog open={suspending !== null} onOpenChange={(open) => !open && setSuspending(null)} title={`Suspend ${suspending?.slug ?? ""}`}>
        <form
          className="space-y-3"
          onSubmit={(e) => {
            e.preventDefault();
            act.mutate({ name: "suspend_tenant", payload: { tenant: suspending!.slug, reason } });
          }}
        >
          <Field label="Reason (shown to the tenant's members)">
            <Input required value={reason} onChange={(e) => setReason(e.target.value)} />
          </Field>
          <ErrorText error={act.error} />
          <Button type="submit" variant="danger" busy={act.isPending}>
            Suspend
          </Button>
        </form>
      </Dialog>
    </Card>
  );
}

interface Plan {
  code: string;
  name: string;
  currency: string;
  price_monthly_cents: number;
  price_yearly_cents: number;
  trial_days: number;
  limits: Record<string, number>;
  features: Record<string, boolean | number>;
  active: boolean;
}

/** The plans (platform admins edit them; every running gateway applies a change at once). */
function Plans() {
  const client = useQueryClient();
  const [editing, setEditing] = useState<Plan | null>(null);
  const plans = useQuery({
    queryKey: ["plans", "all"],
    queryFn: () =>
      request<Plan[]>(
        `${PLATFORM}/rest/v1/plans${query({ select: "code,name,currency,price_monthly_cents,price_yearly_cents,trial_days,limits,features,active", order: "price_monthly_cents" })}`,
      ),
  });
  return (
    <Card title="Plans">
      <ErrorText error={plans.error} />
      <table className="w-full text-left text-sm" data-testid="plans">
        <tbody>
          {plans.data?.map((p) => (
            <tr key={p.code} className="border-t border-slate-100">
              <td className="py-1 font-medium">{p.name}</td>
              <td>{p.code}</td>
              <td>
                {(p.price_monthly_cents / 100).toFixed(2)} {p.currency}/month
              </td>
              <td>{p.active ? "active" : "retired"}</td>
              <td className="text-right">
                <Button variant="ghost" onClick={() => setEditing(p)}>
                  Edit
                </Button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {editing && <PlanForm plan={editing} onClose={() => { setEditing(null); client.invalidateQueries({ queryKey: ["plans"] }); }} />}
    </Card>
  );
}

function PlanForm({ plan, onClose }: { plan: Plan; onClose: () => void }) {
  const [name, setName] = useState(plan.name);
  const [monthly, setMonthly] = useState(String(plan.price_monthly_cents));
  const [yearly, setYearly] = useState(String(plan.price_yearly_cents));
  const [limits, setLimits] = useState(JSON.stringify(plan.limits, null, 2));
  const [features, setFeatures] = useState(JSON.stringify(plan.features, null, 2));
  const [local, setLocal] = useState<string | null>(null);
  const save = useMutation({
    mutationFn: (body: Record<string, unknown>) => request(`${PLATFORM}/rest/v1/plans?code=eq.${encodeURIComponent(plan.code)}`, { method: "PATCH", body }),
    onSuccess: onClose,
  });
  return (
    <Dialog open onOpenChange={(open) => !open && onClose()} title={`Plan ${plan.code}`}>
      <form
        className="space-y-3"
        onSubmit={(e) => {
          e.preventDefault();
          try {
            const body = { name, price_monthly_cents: Number(monthly), price_yearly_cents: Number(yearly), limits: JSON.parse(limits), features: JSON.parse(features) };
            setLocal(null);
            save.mutate(body);
          } catch {
            setLocal("limits and features must be JSON objects");
          }
        }}
      >
        <Field label="Name">
          <Input value={name} onChange={(e) => setName(e.target.value)} />
        </Field>
        <Field label="Monthly price (cents)">
          <Input type="number" min={0} value={monthly} onChange={(e) => setMonthly(e.target.value)} />
        </Field>
        <Field label="Yearly price (cents)">
          <Input type="number" min={0} value={yearly} onChange={(e) => setYearly(e.target.value)} />
        </Field>
        <Field label="Limits (JSON; -1 is unlimited)" error={local ?? undefined}>
          <TextArea rows={8} value={limits} onChange={(e) => setLimits(e.target.value)} />
        </Field>
        <Field label="Features (JSON)">
          <TextArea rows={5} value={features} onChange={(e) => setFeatures(e.target.value)} />
        </Field>
        <ErrorText error={save.error} />
        <Button type="submit" busy={save.isPending}>
          Save plan
        </Button>
      </form>
    </Dialog>
  );
}
