import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { query, request, tenantBase, type Tenant } from "../../api";
import { Badge, Button, Card, Empty, ErrorText, Select, Spinner } from "../../ui";

interface Event {
  id: string;
  entity: string;
  action: string;
  kind: string;
  target: string;
  status: string;
  attempts: number;
  last_error: string | null;
  created_at: string;
}
interface Delivery {
  attempt: number;
  succeeded: boolean;
  status_code: number | null;
  latency_ms: number | null;
  error: string | null;
  created_at: string;
}

/** The tenant's outbox (`/events/v1`, for its admins): webhooks and async hooks, their attempts, redelivery. */
export default function Events({ tenant }: { tenant: Tenant }) {
  const client = useQueryClient();
  const [status, setStatus] = useState("");
  const [open, setOpen] = useState<string | null>(null);
  const base = `${tenantBase(tenant.slug)}/events/v1`;
  const events = useQuery({ queryKey: ["events", tenant.slug, status], queryFn: () => request<Event[]>(`${base}/${query({ status })}`) });
  const redeliver = useMutation({
    mutationFn: (id: string) => request(`${base}/${id}/redeliver`, { method: "POST" }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["events", tenant.slug] }),
  });
  return (
    <Card
      title="Webhooks and events"
      actions={
        <Select aria-label="Event status" value={status} onChange={(e) => setStatus(e.target.value)}>
          <option value="">every status</option>
          {["pending", "delivering", "delivered", "dead"].map((s) => (
            <option key={s}>{s}</option>
          ))}
        </Select>
      }
    >
      <ErrorText error={events.error ?? redeliver.error} />
      {events.isPending ? (
        <Spinner />
      ) : events.data?.length === 0 ? (
        <Empty>No events. Webhooks and async hooks of the schema put them here.</Empty>
      ) : (
        <ul className="space-y-1 text-sm" data-testid="events">
          {events.data?.map((e) => (
            <li key={e.id} className="rounded border border-slate-200 p-2">
              <div className="flex flex-wrap items-center justify-between gap-2">
                <button type="button" className="text-left" aria-expanded={open === e.id} onClick={() => setOpen(open === e.id ? null : e.id)}>
                  <Badge value={e.status} /> {e.entity}.{e.action} → <code className="break-all">{e.target}</code>{" "}
                  <span className="text-slate-500">
                    {e.attempts} attempt{e.attempts === 1 ? "" : "s"} · {new Date(e.created_at).toLocaleString()}
                  </span>
                </button>
                {(e.status === "dead" || e.status === "delivered") && (
                  <Button variant="secondary" busy={redeliver.isPending && redeliver.variables === e.id} onClick={() => redeliver.mutate(e.id)}>
                    Redeliver
                  </Button>
                )}
              </div>
              {e.last_error && <p className="mt-1 text-xs text-rose-700">{e.last_error}</p>}
              {open === e.id && <Deliveries url={`${base}/${e.id}/deliveries`} />}
            </li>
          ))}
        </ul>
      )}
    </Card>
  );
}

function Deliveries({ url }: { url: string }) {
  const log = useQuery({ queryKey: ["deliveries", url], queryFn: () => request<Delivery[]>(url) });
  if (log.isPending) return <Spinner />;
  if (log.error) return <ErrorText error={log.error} />;
  if (log.data.length === 0) return <p className="mt-1 text-xs text-slate-500">Not attempted yet.</p>;
  return (
    <table className="mt-2 w-full text-left text-xs">
      <tbody>
        {log.data.map((d) => (
          <tr key={d.attempt} className="border-t border-slate-100">
            <td className="py-1">#{d.attempt}</td>
            <td>{d.succeeded ? "ok" : "failed"}</td>
            <td>{d.status_code ?? ""}</td>
            <td>{d.latency_ms === null ? "" : `${Math.round(d.latency_ms)} ms`}</td>
            <td className="text-rose-700">{d.error ?? ""}</td>
            <td>{new Date(d.created_at).toLocaleString()}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
