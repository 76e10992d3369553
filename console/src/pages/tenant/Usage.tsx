import { useQuery } from "@tanstack/react-query";
import { Bar, BarChart, CartesianGrid, Legend, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { callFunction, type Tenant } from "../../api";
import { Card, ErrorText, Spinner } from "../../ui";

interface Standing {
  used: number;
  limit: number | null;
  percent: number | null;
  warned: boolean;
}
interface Usage {
  plan: string;
  period: { start: string; end: string };
  quotas: Record<string, Standing>;
  daily: { day: string; metric: string; value: number }[];
}
const CALLS = ["rest_calls", "graphql_calls", "auth_calls", "function_calls"];
const COLOURS = ["#4f46e5", "#0891b2", "#16a34a", "#ea580c"];

/** This period's usage against the plan's limits, and the daily calls of the last month (platform `usage`). */
export default function UsagePage({ tenant }: { tenant: Tenant }) {
  const usage = useQuery({ queryKey: ["usage", tenant.slug], queryFn: () => callFunction<Usage>("usage", { tenant: tenant.slug, days: 30 }) });
  if (usage.isPending) return <Spinner />;
  if (usage.error) return <ErrorText error={usage.error} />;
  const byDay = new Map<string, Record<string, number | string>>();
  for (const { day, metric, value } of usage.data.daily) {
    if (!CALLS.includes(metric)) continue;
    const entry = byDay.get(day) ?? { day };
    entry[metric] = value;
    byDay.set(day, entry);
  }
  return (
    <div className="space-y-4">
      <Card title={`This period (${usage.data.period.start} to ${usage.data.period.end}), plan ${usage.data.plan}`}>
        <ul className="grid gap-3 sm:grid-cols-2 lg:grid-cols-3" data-testid="quotas">
          {Object.entries(usage.data.quotas).map(([name, q]) => (
            <li key={name} className="text-sm">
              <div className="flex justify-between">
                <span>{name.replaceAll("_", " ")}</span>
                <span className={q.warned ? "text-amber-700" : "text-slate-600"}>
                  {q.used.toLocaleString()} / {q.limit === null ? "unlimited" : q.limit.toLocaleString()}
                </span>
              </div>
              {q.percent !== null && (
                <div className="mt-1 h-2 rounded bg-slate-200" role="meter" aria-valuenow={q.percent} aria-valuemin={0} aria-valuemax={100} aria-label={name}>
                  <div className={`h-2 rounded ${q.percent >= 100 ? "bg-rose-600" : q.percent >= 80 ? "bg-amber-500" : "bg-indigo-600"}`} style={{ width: `${Math.min(q.percent, 100)}%` }} />
                </div>
              )}
            </li>
          ))}
        </ul>
      </Card>
      <Card title="API calls per day">
        <div className="h-64">
          <ResponsiveContainer>
            <BarChart data={[...byDay.values()]}>
              <CartesianGrid strokeDasharray="3 3" />
              <XAxis dataKey="day" fontSize={12} />
              <YAxis fontSize={12} allowDecimals={false} />
              <Tooltip />
              <Legend />
              {CALLS.map((metric, i) => (
                <Bar key={metric} dataKey={metric} stackId="calls" fill={COLOURS[i]} />
              ))}
            </BarChart>
          </ResponsiveContainer>
        </div>
      </Card>
    </div>
  );
}
