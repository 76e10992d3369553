import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { callFunction, PLATFORM, query, request, type Tenant } from "../../api";
import { Button, Card, Empty, ErrorText, Field, Select, Spinner } from "../../ui";

interface Plan {
  code: string;
  name: string;
  currency: string;
  price_monthly_cents: number;
  price_yearly_cents: number;
}
interface Preview {
  amount_due_cents: number;
  currency: string;
  lines: { description?: string; amount_cents?: number }[];
}
interface Invoice {
  id: string;
  status: string;
  kind: string;
  currency: string;
  amount_due_cents: number;
  created_at: string;
  hosted_url: string | null;
}

const money = (cents: number, currency: string) => (cents / 100).toLocaleString(undefined, { style: "currency", currency: currency.toUpperCase() });

/** The tenant's plan: a change previewed with its proration before it is applied, cancel and resume, invoices. */
export default function Billing({ tenant }: { tenant: Tenant }) {
  const client = useQueryClient();
  const [plan, setPlan] = useState(tenant.plan);
  const [cycle, setCycle] = useState("month");
  const plans = useQuery({
    queryKey: ["plans", "prices"],
    queryFn: () => request<Plan[]>(`${PLATFORM}/rest/v1/plans${query({ select: "code,name,currency,price_monthly_cents,price_yearly_cents", active: "is.true", order: "price_monthly_cents" })}`),
  });
  const invoices = useQuery({ queryKey: ["invoices", tenant.slug], queryFn: () => callFunction<Invoice[]>("list_invoices", { tenant: tenant.slug }) });
  const preview = useMutation({ mutationFn: () => callFunction<Preview>("preview_plan_change", { tenant: tenant.slug, plan, cycle }) });
  const refresh = () => {
    client.invalidateQueries({ queryKey: ["tenant", tenant.slug] });
    client.invalidateQueries({ queryKey: ["invoices", tenant.slug] });
  };
  const change = useMutation({ mutationFn: () => callFunction("change_plan", { tenant: tenant.slug, plan, cycle }), onSuccess: refresh });
  const cancel = useMutation({ mutationFn: () => callFunction("cancel_subscription", { tenant: tenant.slug }), onSuccess: refresh });
  const resume = useMutation({ mutationFn: () => callFunction("resume_subscription", { tenant: tenant.slug }), onSuccess: refresh });
  return (
    <div className="grid gap-4 lg:grid-cols-2">
      <Card title={`Plan: ${tenant.plan}`}>
        <div className="flex flex-wrap items-end gap-2">
          <Field label="New plan">
            <Select value={plan} onChange={(e) => { setPlan(e.target.value); preview.reset(); }}>
              {plans.data?.map((p) => (
                <option key={p.code} value={p.code}>
                  {p.name} ({money(p.price_monthly_cents, p.currency)}/month, {money(p.price_yearly_cents, p.currency)}/year)
                </option>
              ))}
            </Select>
          </Field>
          <Field label="Billed">
            <Select value={cycle} onChange={(e) => { setCycle(e.target.value); preview.reset(); }}>
              <option value="month">monthly</option>
              <option value="year">yearly</option>
            </Select>
          </Field>
          <Button variant="secondary" busy={preview.isPending} onClick={() => preview.mutate()}>
            Preview
          </Button>
        </div>
        {preview.data && (
          <div className="mt-3 text-sm" data-testid="proration">
            <ul>
              {preview.data.lines.map((line, i) => (
                <li key={i}>
                  {line.description} {line.amount_cents !== undefined && money(line.amount_cents, preview.data.currency)}
                </li>
              ))}
            </ul>
            <p className="mt-1 font-medium">Due now: {money(preview.data.amount_due_cents, preview.data.currency)}</p>
            <Button className="mt-2" busy={change.isPending} onClick={() => change.mutate()}>
              Change to {plan}
            </Button>
          </div>
        )}
        <ErrorText error={plans.error ?? preview.error ?? change.error ?? cancel.error ?? resume.error} />
        {change.isSuccess && <p className="text-sm text-emerald-700">The plan has changed.</p>}
        <div className="mt-4 flex gap-2">
          <Button variant="secondary" busy={cancel.isPending} onClick={() => cancel.mutate()}>
            Cancel at the period's end
          </Button>
          <Button variant="secondary" busy={resume.isPending} onClick={() => resume.mutate()}>
            Resume
          </Button>
        </div>
      </Card>
      <Card title="Invoices">
        <ErrorText error={invoices.error} />
        {invoices.isPending ? (
          <Spinner />
        ) : invoices.data?.length === 0 ? (
          <Empty>No invoices yet.</Empty>
        ) : (
          <table className="w-full text-left text-sm">
            <tbody>
              {invoices.data?.map((i) => (
                <tr key={i.id} className="border-t border-slate-100">
                  <td className="py-1">{new Date(i.created_at).toLocaleDateString()}</td>
                  <td>{i.kind}</td>
                  <td>{i.status}</td>
                  <td>{money(i.amount_due_cents, i.currency)}</td>
                  <td>{i.hosted_url && <a className="text-indigo-700 underline" href={i.hosted_url} target="_blank" rel="noreferrer">view</a>}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </Card>
    </div>
  );
}
