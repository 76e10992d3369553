import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { query, request, tenantBase, type Tenant } from "../../api";
import { Button, Card, Empty, ErrorText, Input, Spinner } from "../../ui";

interface User {
  id: string;
  email: string;
  roles: string[] | null;
  verified: boolean;
  created_at: string;
}

/** The tenant's end users (its `users` entity, as the tenant's admin): search, roles, `verified`, and
 * ending a user's sessions (`/auth/v1/admin/users/{id}/logout`). */
export default function Users({ tenant }: { tenant: Tenant }) {
  const client = useQueryClient();
  const base = tenantBase(tenant.slug);
  const [search, setSearch] = useState("");
  const users = useQuery({
    queryKey: ["users", tenant.slug, search],
    queryFn: () =>
      request<User[]>(
        `${base}/rest/v1/users${query({ select: "id,email,roles,verified,created_at", order: "created_at.desc", limit: 100, email: search ? `ilike.*${search}*` : undefined })}`,
      ),
  });
  const update = useMutation({
    mutationFn: ({ id, patch }: { id: string; patch: Partial<User> }) => request(`${base}/rest/v1/users?id=eq.${id}`, { method: "PATCH", body: patch }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["users", tenant.slug] }),
  });
  const endSessions = useMutation({ mutationFn: (id: string) => request(`${base}/auth/v1/admin/users/${id}/logout`, { method: "POST" }) });
  return (
    <Card title="Auth users" actions={<Input aria-label="Search by email" placeholder="search by email" value={search} onChange={(e) => setSearch(e.target.value)} />}>
      <ErrorText error={users.error ?? update.error ?? endSessions.error} />
      {endSessions.isSuccess && <p className="text-sm text-emerald-700">Their sessions have ended.</p>}
      {users.isPending ? (
        <Spinner />
      ) : users.data?.length === 0 ? (
        <Empty>No users{search ? " match" : " yet"}.</Empty>
      ) : (
        <table className="w-full text-left text-sm" data-testid="users">
          <thead className="text-xs uppercase text-slate-500">
            <tr>
              <th>Email</th>
              <th>Roles</th>
              <th>Verified</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {users.data?.map((u) => (
              <tr key={u.id} className="border-t border-slate-100">
                <td className="py-1">{u.email}</td>
                <td>
                  <Input
                    aria-label={`Roles of ${u.email}`}
                    defaultValue={(u.roles ?? []).join(", ")}
                    onBlur={(e) => {
                      const roles = e.target.value.split(",").map((r) => r.trim()).filter(Boolean);
                      if (roles.join() !== (u.roles ?? []).join()) update.mutate({ id: u.id, patch: { roles } });
                    }}
                  />
                </td>
                <td>
                  <input
                    type="checkbox"
                    aria-label={`${u.email} is verified`}
                    checked={u.verified}
                    onChange={(e) => update.mutate({ id: u.id, patch: { verified: e.target.checked } })}
                  />
                </td>
                <td className="text-right">
                  <Button variant="ghost" busy={endSessions.isPending && endSessions.variables === u.id} onClick={() => endSessions.mutate(u.id)}>
                    End sessions
                  </Button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Card>
  );
}
