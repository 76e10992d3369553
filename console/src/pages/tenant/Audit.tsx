import { useInfiniteQuery } from "@tanstack/react-query";
import { useState } from "react";
import { callFunction, type Tenant } from "../../api";
import { Button, Card, Empty, ErrorText, Field, Input, Spinner } from "../../ui";

interface Entry {
  id: string;
  seq: number;
  created_at: string;
  action: string;
  entity: string | null;
  record_id: string | null;
  user_id: string | null;
  key_name: string | null;
  roles: string[] | null;
  ip: string | null;
  changes: Record<string, unknown> | null;
}
interface Page {
  entries: Entry[];
  next_cursor: string | null;
}

/** The tenant's audit trail (platform `audit_entries`), filtered, a page at a time. */
export default function Audit({ tenant }: { tenant: Tenant }) {
  const [filters, setFilters] = useState({ action: "", entity: "", actor: "" });
  const [applied, setApplied] = useState(filters);
  const trail = useInfiniteQuery({
    queryKey: ["audit", tenant.slug, applied],
    initialPageParam: null as string | null,
    queryFn: ({ pageParam }) =>
      callFunction<Page>("audit_entries", {
        tenant: tenant.slug,
        limit: 50,
        ...Object.fromEntries(Object.entries(applied).filter(([, v]) => v)),
        ...(pageParam ? { after: pageParam } : {}),
      }),
    getNextPageParam: (last) => last.next_cursor,
  });
  const entries = trail.data?.pages.flatMap((p) => p.entries) ?? [];
  return (
    <Card title="Audit trail">
      <form
        className="mb-3 flex flex-wrap items-end gap-2"
        onSubmit={(e) => {
          e.preventDefault();
          setApplied(filters);
        }}
      >
        {(["action", "entity", "actor"] as const).map((name) => (
          <Field key={name} label={name}>
            <Input value={filters[name]} onChange={(e) => setFilters({ ...filters, [name]: e.target.value })} />
          </Field>
        ))}
        <Button type="submit" variant="secondary">
          Filter
        </Button>
      </form>
      <ErrorText error={trail.error} />
      {trail.isPending ? (
        <Spinner />
      ) : entries.length === 0 ? (
        <Empty>No entries.</Empty>
      ) : (
        <div className="overflow-x-auto">
          <table className="w-full text-left text-sm" data-testid="audit">
            <thead className="text-xs uppercase text-slate-500">
              <tr>
                <th>When</th>
                <th>Action</th>
                <th>Entity</th>
                <th>Actor</th>
                <th>Changes</th>
              </tr>
            </thead>
            <tbody>
              {entries.map((e) => (
                <tr key={e.id} className="border-t border-slate-100 align-top">
                  <td className="whitespace-nowrap py-1">{new Date(e.created_at).toLocaleString()}</td>
                  <td>{e.action}</td>
                  <td>{e.entity}</td>
                  <td>{e.user_id ?? e.key_name ?? (e.roles ?? []).join(", ")}</td>
                  <td className="max-w-md truncate" title={e.changes ? JSON.stringify(e.changes) : ""}>
                    {e.changes ? JSON.stringify(e.changes) : ""}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {trail.hasNextPage && (
        <Button variant="secondary" className="mt-2" busy={trail.isFetchingNextPage} onClick={() => trail.fetchNextPage()}>
          Load more
        </Button>
      )}
    </Card>
  );
}
