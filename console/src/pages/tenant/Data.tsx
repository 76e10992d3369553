import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { ApiError, query, request, send, tenantBase, type Tenant } from "../../api";
import { Button, Card, Dialog, Empty, ErrorText, Field, Input, Select, Spinner, TextArea } from "../../ui";

interface JsonSchema {
  type?: string | string[];
  enum?: unknown[];
  format?: string;
  items?: JsonSchema;
  anyOf?: JsonSchema[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  description?: string;
}
interface OpenApi {
  components: { schemas: Record<string, JsonSchema> };
}
type Row = Record<string, unknown>;

const OPERATORS = ["eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is"] as const;
const PAGE = 25;

/** The table editor: the tenant's entities as its OpenAPI document describes them to the member, rows
 * through its REST API (filters with the REST operators, sort, exact counts), forms generated from the
 * entity's create and update schemas, and the API's validation errors shown at their fields. */
export default function Data({ tenant }: { tenant: Tenant }) {
  const base = tenantBase(tenant.slug);
  const openapi = useQuery({
    queryKey: ["openapi", tenant.slug],
    queryFn: () => request<OpenApi>(`${base}/rest/v1/`, { headers: { Accept: "application/openapi+json" } }),
  });
  const [entity, setEntity] = useState<string | null>(null);
  if (openapi.isPending) return <Spinner />;
  if (openapi.error) return <ErrorText error={openapi.error} />;
  const schemas = openapi.data.components.schemas;
  const entities = Object.keys(schemas).filter((name) => name !== "Error" && schemas[`${name}_create`]);
  if (entities.length === 0) return <Empty>No entity yet: deploy a schema first.</Empty>;
  const chosen = entity && entities.includes(entity) ? entity : entities[0];
  return (
    <div className="grid gap-4 md:grid-cols-[12rem_1fr]">
      <nav aria-label="Entities" className="space-y-1">
        {entities.map((name) => (
          <button
            key={name}
            type="button"
            onClick={() => setEntity(name)}
            aria-current={name === chosen}
            className={`block w-full rounded px-2 py-1 text-left text-sm ${name === chosen ? "bg-indigo-100 font-medium text-indigo-800" : "hover:bg-slate-100"}`}
          >
            {name}
          </button>
        ))}
      </nav>
      <Rows key={chosen} base={base} entity={chosen} schemas={schemas} />
    </div>
  );
}

interface Filter {
  column: string;
  op: string;
  value: string;
}

function Rows({ base, entity, schemas }: { base: string; entity: string; schemas: Record<string, JsonSchema> }) {
  const client = useQueryClient();
  const [row, create, update] = [schemas[entity], schemas[`${entity}_create`], schemas[`${entity}_update`]];
  const columns = Object.keys(row.properties ?? {});
  const [filters, setFilters] = useState<Filter[]>([]);
  const [order, setOrder] = useState<{ column: string; desc: boolean }>({ column: "created_at", desc: true });
  const [page, setPage] = useState(0);
  const [editing, setEditing] = useState<Row | "new" | null>(null);
  const params: Record<string, string | number> = {
    select: "*",
    order: `${order.column}.${order.desc ? "desc" : "asc"}`,
    limit: PAGE,
    offset: page * PAGE,
  };
  const search = new URLSearchParams(query(params));
  for (const f of filters) search.append(f.column, `${f.op}.${f.value}`);
  const rows = useQuery({
    queryKey: ["rows", base, entity, search.toString()],
    queryFn: async () => {
      const answer = await send(`${base}/rest/v1/${entity}?${search}`, { headers: { Prefer: "count=exact" } });
      const total = Number(answer.headers.get("Content-Range")?.split("/")[1] ?? NaN);
      return { rows: (await answer.json()) as Row[], total };
    },
  });
  const remove = useMutation({
    mutationFn: (id: unknown) => request(`${base}/rest/v1/${entity}?id=eq.${encodeURIComponent(String(id))}`, { method: "DELETE" }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["rows", base, entity] }),
  });
  const total = rows.data?.total;
  return (
    <Card title={entity} actions={<Button onClick={() => setEditing("new")}>Insert row</Button>}>
      <Filters columns={columns} filters={filters} onChange={(next) => { setFilters(next); setPage(0); }} />
      <ErrorText error={rows.error ?? remove.error} />
      {rows.isPending ? (
        <Spinner />
      ) : rows.data && rows.data.rows.length === 0 ? (
        <Empty>No rows{filters.length ? " match these filters" : " yet"}.</Empty>
      ) : (
        <div className="overflow-x-auto">
          <table className="w-full text-left text-sm" data-testid="rows">
            <thead className="text-xs uppercase text-slate-500">
              <tr>
                {columns.map((c) => (
                  <th key={c} className="whitespace-nowrap px-1 py-1">
                    <button type="button" onClick={() => setOrder({ column: c, desc: order.column === c ? !order.desc : false })}>
                      {c} {order.column === c ? (order.desc ? "↓" : "↑") : ""}
                    </button>
                  </th>
                ))}
                <th />
              </tr>
            </thead>
            <tbody>
              {rows.data?.rows.map((r) => (
                <tr key={String(r.id)} className="border-t border-slate-100">
                  {columns.map((c) => (
                    <td key={c} className="max-w-[16rem] truncate px-1 py-1" title={display(r[c])}>
                      {display(r[c])}
                    </td>
                  ))}
                  <td className="whitespace-nowrap text-right">
                    <Button variant="ghost" onClick={() => setEditing(r)}>
                      Edit
                    </Button>
                    <Button variant="ghost" busy={remove.isPending && remove.variables === r.id} onClick={() => remove.mutate(r.id)}>
                      Delete
                    </Button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <div className="mt-2 flex items-center justify-between text-sm">
        <span data-testid="row-count">{Number.isFinite(total) ? `${total} rows` : ""}</span>
        <span className="flex gap-2">
          <Button variant="secondary" disabled={page === 0} onClick={() => setPage(page - 1)}>
            Previous
          </Button>
          <Button variant="secondary" disabled={!Number.isFinite(total) || (page + 1) * PAGE >= (total ?? 0)} onClick={() => setPage(page + 1)}>
            Next
          </Button>
        </span>
      </div>
      {editing && (
        <RowForm
          base={base}
          schemas={schemas}
          entity={entity}
          schema={editing === "new" ? create : update}
          row={editing === "new" ? null : editing}
          onClose={() => setEditing(null)}
        />
      )}
    </Card>
  );
}

function display(value: unknown): string {
  if (value === null || value === undefined) return "";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function Filters({ columns, filters, onChange }: { columns: string[]; filters: Filter[]; onChange: (next: Filter[]) => void }) {
  const [draft, setDraft] = useState<Filter>({ column: columns[0] ?? "id", op: "eq", value: "" });
  return (
    <div className="mb-3 space-y-2">
      <form
        className="flex flex-wrap items-end gap-2"
        onSubmit={(e) => {
          e.preventDefault();
          onChange([...filters, draft]);
          setDraft({ ...draft, value: "" });
        }}
      >
        <Select aria-label="Filter column" value={draft.column} onChange={(e) => setDraft({ ...draft, column: e.target.value })} className="w-auto">
          {columns.map((c) => (
            <option key={c}>{c}</option>
          ))}
        </Select>
        <Select aria-label="Filter operator" value={draft.op} onChange={(e) => setDraft({ ...draft, op: e.target.value })} className="w-auto">
          {OPERATORS.map((op) => (
            <option key={op}>{op}</option>
          ))}
        </Select>
        <Input aria-label="Filter value" value={draft.value} onChange={(e) => setDraft({ ...draft, value: e.target.value })} className="w-48" placeholder="value" />
        <Button type="submit" variant="secondary">
          Add filter
        </Button>
      </form>
      {filters.length > 0 && (
        <ul className="flex flex-wrap gap-2 text-xs">
          {filters.map((f, i) => (
            <li key={i} className="flex items-center gap-1 rounded-full bg-slate-200 px-2 py-0.5">
              <code>
                {f.column}={f.op}.{f.value}
              </code>
              <button type="button" aria-label="Remove filter" onClick={() => onChange(filters.filter((_, j) => j !== i))}>
                ×
              </button>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

function kindOf(schema: JsonSchema): string {
  const plain = schema.anyOf?.find((s) => s.type !== "null") ?? schema;
  if (plain.enum) return "enum";
  const type = Array.isArray(plain.type) ? plain.type.find((t) => t !== "null") : plain.type;
  if (type === "string" && plain.format === "date") return "date";
  if (type === "string" && plain.format === "date-time") return "datetime";
  return type ?? "json";
}

function RowForm({
  base,
  schemas,
  entity,
  schema,
  row,
  onClose,
}: {
  base: string;
  schemas: Record<string, JsonSchema>;
  entity: string;
  schema: JsonSchema;
  row: Row | null;
  onClose: () => void;
}) {
  const client = useQueryClient();
  const fields = Object.entries(schema.properties ?? {});
  const [values, setValues] = useState<Record<string, string>>(() =>
    Object.fromEntries(fields.map(([name]) => [name, row ? formValue(row[name]) : ""])),
  );
  const [local, setLocal] = useState<Record<string, string>>({});
  const save = useMutation({
    mutationFn: (body: Row) =>
      row
        ? request(`${base}/rest/v1/${entity}?id=eq.${encodeURIComponent(String(row.id))}`, { method: "PATCH", body })
        : request(`${base}/rest/v1/${entity}`, { body }),
    onSuccess: () => {
      client.invalidateQueries({ queryKey: ["rows", base, entity] });
      onClose();
    },
  });
  const serverErrors: Record<string, string> = {};
  if (save.error instanceof ApiError)
    for (const d of save.error.details) {
      const name = (d.field ?? d.path ?? "").split(".").at(-1) ?? "";
      if (name) serverErrors[name] = d.message;
    }

  function submit(event: FormEvent) {
    event.preventDefault();
    const body: Row = {};
    const problems: Record<string, string> = {};
    for (const [name, field] of fields) {
      const text = values[name];
      if (row && text === formValue(row[name])) continue; // unchanged
      if (text === "" && !(schema.required ?? []).includes(name)) {
        if (row) body[name] = null;
        continue;
      }
      try {
        body[name] = parse(kindOf(field), text);
      } catch {
        problems[name] = "not valid JSON";
      }
    }
    setLocal(problems);
    if (Object.keys(problems).length === 0) save.mutate(body);
  }

  return (
    <Dialog open onOpenChange={(open) => !open && onClose()} title={row ? `Edit ${entity}` : `Insert into ${entity}`}>
      <form onSubmit={submit} className="space-y-3">
        {fields.map(([name, field]) => (
          <Field
            key={name}
            label={`${name}${(schema.required ?? []).includes(name) ? " *" : ""}`}
            error={local[name] ?? serverErrors[name]}
            hint={targetOf(field) ? `a row of ${targetOf(field)}` : field.description}
          >
            {targetOf(field) ? (
              <RefPicker base={base} target={targetOf(field)!} row={schemas[targetOf(field)!]} value={values[name]} onChange={(v) => setValues({ ...values, [name]: v })} />
            ) : (
              <Widget name={name} field={field} value={values[name]} onChange={(v) => setValues({ ...values, [name]: v })} />
            )}
          </Field>
        ))}
        <ErrorText error={save.error} />
        <div className="flex justify-end gap-2">
          <Button type="button" variant="secondary" onClick={onClose}>
            Cancel
          </Button>
          <Button type="submit" busy={save.isPending}>
            Save
          </Button>
        </div>
      </form>
    </Dialog>
  );
}

function formValue(value: unknown): string {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.every((v) => typeof v !== "object") ? value.join(", ") : JSON.stringify(value);
  return typeof value === "object" ? JSON.stringify(value, null, 2) : String(value);
}

function parse(kind: string, text: string): unknown {
  switch (kind) {
    case "integer":
    case "number":
      return Number(text);
    case "boolean":
      return text === "true";
    case "array":
      return text.trim().startsWith("[") ? JSON.parse(text) : text.split(",").map((s) => s.trim()).filter(Boolean);
    case "object":
    case "json":
      return JSON.parse(text);
    case "datetime":
      return new Date(text).toISOString();
    default:
      return text;
  }
}

function Widget({ name, field, value, onChange }: { name: string; field: JsonSchema; value: string; onChange: (v: string) => void }) {
  const kind = kindOf(field);
  const plain = field.anyOf?.find((s) => s.type !== "null") ?? field;
  switch (kind) {
    case "enum":
      return (
        <Select name={name} value={value} onChange={(e) => onChange(e.target.value)}>
          <option value="" />
          {plain.enum!.map((v) => (
            <option key={String(v)}>{String(v)}</option>
          ))}
        </Select>
      );
    case "boolean":
      return (
        <Select name={name} value={value} onChange={(e) => onChange(e.target.value)}>
          <option value="" />
          <option>true</option>
          <option>false</option>
        </Select>
      );
    case "integer":
    case "number":
      return <Input name={name} type="number" step={kind === "integer" ? 1 : "any"} value={value} onChange={(e) => onChange(e.target.value)} />;
    case "date":
      return <Input name={name} type="date" value={value.slice(0, 10)} onChange={(e) => onChange(e.target.value)} />;
    case "datetime":
      return <Input name={name} type="datetime-local" value={value.slice(0, 16)} onChange={(e) => onChange(e.target.value)} />;
    case "object":
    case "json":
      return <TextArea name={name} rows={4} value={value} onChange={(e) => onChange(e.target.value)} />;
    case "array":
      return <Input name={name} value={value} onChange={(e) => onChange(e.target.value)} placeholder="a, b, c" />;
    default:
      return <Input name={name} value={value} onChange={(e) => onChange(e.target.value)} />;
  }
}

/** The target entity of a ref column, from PostgREST's foreign-key note in its description. */
function targetOf(field: JsonSchema): string | null {
  const plain = field.anyOf?.find((s) => s.type !== "null") ?? field;
  return /<fk table='([^']+)'/.exec(field.description ?? plain.description ?? "")?.[1] ?? null;
}

/** A searchable picker of the target's rows: the first text column labels them, its `ilike` searches. */
function RefPicker({ base, target, row, value, onChange }: { base: string; target: string; row?: JsonSchema; value: string; onChange: (v: string) => void }) {
  const [search, setSearch] = useState("");
  const label = Object.entries(row?.properties ?? {}).find(
    ([name, s]) => !["id", "owner_id", "created_at", "updated_at"].includes(name) && kindOf(s) === "string" && !targetOf(s),
  )?.[0];
  const options = useQuery({
    queryKey: ["ref", base, target, label, search],
    queryFn: () =>
      request<Row[]>(
        `${base}/rest/v1/${target}${query({ select: label ? `id,${label}` : "id", limit: 20, order: label, [label ?? "id"]: search && label ? `ilike.*${search}*` : undefined })}`,
      ),
  });
  return (
    <div className="space-y-1">
      <Input aria-label={`Search ${target}`} placeholder={`search ${target}${label ? ` by ${label}` : ""}`} value={search} onChange={(e) => setSearch(e.target.value)} />
      <Select aria-label={`Pick a ${target}`} value={value} onChange={(e) => onChange(e.target.value)}>
        <option value="">(none)</option>
        {value && !options.data?.some((o) => o.id === value) && <option value={value}>{value}</option>}
        {options.data?.map((o) => (
          <option key={String(o.id)} value={String(o.id)}>
            {label ? `${String(o[label])} (${String(o.id).slice(0, 8)})` : String(o.id)}
          </option>
        ))}
      </Select>
      <ErrorText error={options.error} />
    </div>
  );
}
