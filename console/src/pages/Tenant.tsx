import * as Tabs from "@radix-ui/react-tabs";
import { useQuery } from "@tanstack/react-query";
import { lazy, Suspense } from "react";
import { useLocation } from "wouter";
import { PLATFORM, query, request, TENANT_COLUMNS, type Tenant } from "../api";
import { Badge, ErrorText, Spinner } from "../ui";
import { Members } from "./tenant/Members";
import { Overview } from "./tenant/Overview";
import { Settings } from "./tenant/Settings";

// the heavy views load on demand: the schema editor (CodeMirror), the data editor, usage charts (Recharts)
const Schema = lazy(() => import("./tenant/Schema"));
const Data = lazy(() => import("./tenant/Data"));
const Usage = lazy(() => import("./tenant/Usage"));
const Audit = lazy(() => import("./tenant/Audit"));
const Users = lazy(() => import("./tenant/Users"));
const Events = lazy(() => import("./tenant/Events"));
const Billing = lazy(() => import("./tenant/Billing"));
const Api = lazy(() => import("./tenant/Api"));

const TABS = [
  ["overview", "Overview"],
  ["schema", "Schema"],
  ["data", "Data"],
  ["users", "Auth users"],
  ["members", "Members"],
  ["events", "Webhooks"],
  ["api", "API"],
  ["usage", "Usage"],
  ["billing", "Billing"],
  ["audit", "Audit"],
  ["settings", "Settings"],
] as const;

export function useTenant(slug: string) {
  return useQuery({
    queryKey: ["tenant", slug],
    queryFn: async () => {
      const rows = await request<Tenant[]>(`${PLATFORM}/rest/v1/tenants${query({ select: TENANT_COLUMNS, slug: `eq.${slug}` })}`);
      return rows[0] ?? null;
    },
    refetchInterval: (q) => (q.state.data?.status === "pending" ? 1000 : false),
  });
}

export function TenantPage({ slug, tab }: { slug: string; tab: string }) {
  const tenant = useTenant(slug);
  const [, navigate] = useLocation();
  if (tenant.isPending) return <Spinner />;
  if (tenant.error) return <ErrorText error={tenant.error} />;
  if (!tenant.data) return <p>No tenant '{slug}' that you are a member of.</p>;
  const t = tenant.data;
  return (
    <div className="space-y-4">
      <div className="flex flex-wrap items-center gap-3">
        <h1 className="text-xl font-semibold">{t.name}</h1>
        <span className="text-slate-500">{t.slug}</span>
        <Badge value={t.status} />
        {t.status_reason && <span className="text-sm text-slate-600">{t.status_reason}</span>}
      </div>
      {t.status === "pending" && (
        <p className="flex items-center gap-2 text-sm text-amber-800" role="status">
          <Spinner /> Provisioning{t.provisioning.steps?.length ? `: ${t.provisioning.steps.at(-1)}` : ""}...
        </p>
      )}
      {t.status === "failed" && (
        <ErrorText error={new Error(`Provisioning failed at ${t.provisioning.failed_step ?? "a step"}: ${t.provisioning.error ?? ""}`)} />
      )}
      <Tabs.Root value={tab} onValueChange={(next) => navigate(`/t/${slug}/${next}`)}>
        <Tabs.List className="mb-4 flex flex-wrap gap-1 border-b border-slate-200" aria-label="Tenant views">
          {TABS.map(([value, label]) => (
            <Tabs.Trigger
              key={value}
              value={value}
              className="rounded-t-md px-3 py-1.5 text-sm text-slate-600 data-[state=active]:border-b-2 data-[state=active]:border-indigo-600 data-[state=active]:font-medium data-[state=active]:text-indigo-700"
            >
              {label}
            </Tabs.Trigger>
          ))}
        </Tabs.List>
        <Suspense fallback={<Spinner />}>
          <Tabs.Content value="overview">
            <Overview tenant={t} />
          </Tabs.Content>
          <Tabs.Content value="schema">{tab === "schema" && <Schema tenant={t} />}</Tabs.Content>
          <Tabs.Content value="data">{tab === "data" && <Data tenant={t} />}</Tabs.Content>
          <Tabs.Content value="members">
            <Members tenant={t} />
          </Tabs.Content>
          <Tabs.Content value="users">{tab === "users" && <Users tenant={t} />}</Tabs.Content>
          <Tabs.Content value="events">{tab === "events" && <Events tenant={t} />}</Tabs.Content>
          <Tabs.Content value="api">{tab === "api" && <Api tenant={t} />}</Tabs.Content>
          <Tabs.Content value="usage">{tab === "usage" && <Usage tenant={t} />}</Tabs.Content>
          <Tabs.Content value="billing">{tab === "billing" && <Billing tenant={t} />}</Tabs.Content>
          <Tabs.Content value="audit">{tab === "audit" && <Audit tenant={t} />}</Tabs.Content>
          <Tabs.Content value="settings">
            <Settings tenant={t} />
          </Tabs.Content>
        </Suspense>
      </Tabs.Root>
    </div>
  );
}
