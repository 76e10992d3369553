import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Link } from "wouter";
import { callFunction, PLATFORM, query, request, TENANT_COLUMNS, type Tenant } from "../api";
import { Badge, Button, Card, Dialog, ErrorText, Field, Input, Spinner } from "../ui";

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
