import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { callFunction, PLATFORM, query, request, session, type Tenant } from "../../api";
import { Button, Card, ErrorText, Field, Input, Select, Spinner } from "../../ui";

interface Member {
  email: string;
  role: string;
  since: string;
}
interface Invitation {
  id: string;
  email: string;
  role: string;
  expires_at: string;
}
const ROLES = ["owner", "admin", "developer", "viewer"];

/** Members and invitations. The last owner can be neither removed nor demoted: the controls say so up front. */
export function Members({ tenant }: { tenant: Tenant }) {
  const client = useQueryClient();
  const [email, setEmail] = useState("");
  const [role, setRole] = useState("developer");
  const [link, setLink] = useState<string | null>(null);
  const members = useQuery({ queryKey: ["members", tenant.slug], queryFn: () => callFunction<Member[]>("list_members", { tenant: tenant.slug }) });
  const me = members.data?.find((m) => m.email === session()?.user.email);
  const manager = me?.role === "owner" || me?.role === "admin";
  const invitations = useQuery({
    queryKey: ["invitations", tenant.id],
    enabled: manager,
    queryFn: () =>
      request<Invitation[]>(
        `${PLATFORM}/rest/v1/invitations${query({ select: "id,email,role,expires_at", tenant_id: `eq.${tenant.id}`, accepted_at: "is.null", revoked_at: "is.null", order: "created_at.desc" })}`,
      ),
  });
  const refresh = () => {
    client.invalidateQueries({ queryKey: ["members", tenant.slug] });
    client.invalidateQueries({ queryKey: ["invitations", tenant.id] });
  };
  const invite = useMutation({
    mutationFn: () => callFunction<{ token: string }>("invite_member", { tenant: tenant.slug, email, role }),
    onSuccess: (made) => {
      setLink(`${location.origin}/admin/accept?token=${encodeURIComponent(made.token)}`);
      setEmail("");
      refresh();
    },
  });
  const change = useMutation({
    mutationFn: (next: { email: string; role: string }) => callFunction("change_member_role", { tenant: tenant.slug, ...next }),
    onSuccess: refresh,
  });
  const remove = useMutation({
    mutationFn: (who: string) => callFunction("remove_member", { tenant: tenant.slug, email: who }),
    onSuccess: refresh,
  });
  const cancel = useMutation({
    mutationFn: (id: string) => callFunction("cancel_invitation", { tenant: tenant.slug, invitation: id }),
    onSuccess: refresh,
  });
  const owners = members.data?.filter((m) => m.role === "owner").length ?? 0;

  function submit(event: FormEvent) {
    event.preventDefault();
    invite.mutate();
  }

  return (
    <div className="grid gap-4 lg:grid-cols-2">
      <Card title="Members">
        <ErrorText error={members.error ?? change.error ?? remove.error} />
        {members.isPending ? (
          <Spinner />
        ) : (
          <table className="w-full text-left text-sm" data-testid="members">
            <tbody>
              {members.data?.map((m) => {
                const lastOwner = m.role === "owner" && owners === 1;
                return (
                  <tr key={m.email} className="border-t border-slate-100" data-member={m.email}>
                    <td className="py-1">{m.email}</td>
                    <td>
                      <Select
                        aria-label={`Role of ${m.email}`}
                        value={m.role}
                        disabled={!manager || lastOwner}
                        title={lastOwner ? "The last owner cannot be demoted: make someone else owner first" : undefined}
                        onChange={(e) => change.mutate({ email: m.email, role: e.target.value })}
                        className="w-auto"
                      >
                        {ROLES.map((r) => (
                          <option key={r}>{r}</option>
                        ))}
                      </Select>
                    </td>
                    <td className="text-right">
                      {lastOwner ? (
                        <span className="text-xs text-slate-500">last owner</span>
                      ) : (
                        manager && (
                          <Button variant="ghost" busy={remove.isPending && remove.variables === m.email} onClick={() => remove.mutate(m.email)}>
                            Remove
                          </Button>
                        )
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
      </Card>
      {manager && (
        <Card title="Invite">
          <form onSubmit={submit} className="flex flex-wrap items-end gap-2">
            <Field label="Email">
              <Input type="email" aria-label="Invitee's email" required value={email} onChange={(e) => setEmail(e.target.value)} />
            </Field>
            <Field label="Role">
              <Select aria-label="Invitee's role" value={role} onChange={(e) => setRole(e.target.value)}>
                {ROLES.map((r) => (
                  <option key={r}>{r}</option>
                ))}
              </Select>
            </Field>
            <Button type="submit" busy={invite.isPending}>
              Invite
            </Button>
          </form>
          <ErrorText error={invite.error ?? cancel.error} />
          {link && (
            <p className="mt-2 break-all text-sm" data-testid="invitation-link">
              Send this link to the invitee (shown once): <code>{link}</code>
            </p>
          )}
          <h3 className="mt-4 text-sm font-semibold">Pending invitations</h3>
          <ul className="text-sm">
            {invitations.data?.map((i) => (
              <li key={i.id} className="flex items-center justify-between border-t border-slate-100 py-1">
                <span>
                  {i.email} · {i.role}
                </span>
                <Button variant="ghost" busy={cancel.isPending && cancel.variables === i.id} onClick={() => cancel.mutate(i.id)}>
                  Cancel
                </Button>
              </li>
            ))}
          </ul>
        </Card>
      )}
    </div>
  );
}
