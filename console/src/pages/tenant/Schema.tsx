import { yaml, yamlLanguage } from "@codemirror/lang-yaml";
import { linter, lintGutter, type Diagnostic } from "@codemirror/lint";
import { hoverTooltip } from "@codemirror/view";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { basicSetup, EditorView } from "codemirror";
import { stateExtensions } from "codemirror-json-schema";
import { yamlCompletion, yamlSchemaHover } from "codemirror-json-schema/yaml";
import { useEffect, useRef, useState } from "react";
import { ApiError, callFunction, PLATFORM, query, request, type Problem, type Tenant } from "../../api";
import { Button, Card, Code, ErrorText, Spinner } from "../../ui";
// the schema format's published JSON Schema: completion and hover docs as you type (the server still checks)
import formatSchema from "../../../../engine/schema/schema.json";

interface Step {
  kind: string;
  target: string;
  description: string;
  sql: string[];
  destructive: boolean;
}
interface Plan {
  base_version: number | null;
  base_checksum: string;
  ok: boolean;
  steps: Step[];
  blockers: Problem[];
}
interface Version {
  version: number;
  checksum: string;
  actor: string;
  created_at: string;
  steps: number;
  diff: string;
}

/** The schema editor: the server's checker runs as you type (its errors inline at their lines), the plan
 * of the deploy is previewed step by step with its SQL, and the deploy is guarded by the plan's checksum. */
export default function Schema({ tenant }: { tenant: Tenant }) {
  const client = useQueryClient();
  const current = useQuery({
    queryKey: ["schema", tenant.id],
    queryFn: async () => {
      const rows = await request<{ version: number; source: string }[]>(
        `${PLATFORM}/rest/v1/schema_versions${query({ select: "version,source", tenant_id: `eq.${tenant.id}`, order: "version.desc", limit: 1 })}`,
      );
      return rows[0] ?? { version: 0, source: `name: ${tenant.slug}\nentities: {}\n` };
    },
  });
  const [source, setSource] = useState<string | null>(null);
  const [plan, setPlan] = useState<Plan | null>(null);
  const [planError, setPlanError] = useState<unknown>(null);
  const [allowDestructive, setAllowDestructive] = useState(false);
  const text = source ?? current.data?.source ?? "";

  const deploy = useMutation({
    mutationFn: () =>
      callFunction<{ version: number }>("deploy_schema", {
        tenant: tenant.slug,
        source: text,
        expected_checksum: plan!.base_checksum,
        allow_destructive: allowDestructive,
      }),
    onSuccess: () => {
      setSource(null);
      setPlan(null);
      client.invalidateQueries({ queryKey: ["schema", tenant.id] });
      client.invalidateQueries({ queryKey: ["history", tenant.id] });
      client.invalidateQueries({ queryKey: ["openapi", tenant.slug] });
      client.invalidateQueries({ queryKey: ["tenant", tenant.slug] });
    },
    onError: (error) => {
      if (error instanceof ApiError && error.status === 409) client.invalidateQueries({ queryKey: ["history", tenant.id] });
    },
  });

  if (current.isPending) return <Spinner />;
  if (current.error) return <ErrorText error={current.error} />;
  const destructive = plan?.steps.some((s) => s.destructive) ?? false;
  return (
    <div className="grid gap-4 xl:grid-cols-[3fr_2fr]">
      <Card title={`Schema (deployed: v${current.data.version})`}>
        <Editor
          key={current.data.version}
          initial={current.data.source}
          tenant={tenant.slug}
          onChange={(next) => {
            setSource(next);
            deploy.reset();
          }}
          onPlan={(next, error) => {
            setPlan(next);
            setPlanError(error);
          }}
        />
        <p className="mt-2 text-xs text-slate-500">Checked by the server as you type; errors show at their line.</p>
      </Card>
      <div className="min-w-0 space-y-4">
        <Card
          title="Plan"
          actions={
            <Button
              busy={deploy.isPending}
              disabled={!plan || !plan.ok || plan.steps.length === 0 || (destructive && !allowDestructive)}
              onClick={() => deploy.mutate()}
            >
              Deploy
            </Button>
          }
        >
          {planError ? (
            <ErrorText error={planError} />
          ) : !plan ? (
            <Spinner />
          ) : plan.steps.length === 0 ? (
            <p className="text-sm text-slate-500" data-testid="plan-empty">
              No change to deploy.
            </p>
          ) : (
            <ol className="space-y-2 text-sm" data-testid="plan-steps">
              {plan.steps.map((step, i) => (
                <li key={i} className={step.destructive ? "rounded border border-rose-300 bg-rose-50 p-2" : "rounded border border-slate-200 p-2"}>
                  <p>
                    {step.destructive && <strong className="text-rose-700">destructive · </strong>}
                    {step.description}
                  </p>
                  <Code>{step.sql.join(";\n")}</Code>
                </li>
              ))}
            </ol>
          )}
          {plan?.blockers.map((b, i) => (
            <p key={i} className="mt-2 text-sm text-rose-700">
              {b.message}
            </p>
          ))}
          {destructive && (
            <label className="mt-2 flex items-center gap-2 text-sm">
              <input type="checkbox" checked={allowDestructive} onChange={(e) => setAllowDestructive(e.target.checked)} />I understand that
              the destructive steps lose data
            </label>
          )}
          <div className="mt-2">
            <ErrorText error={deploy.error} />
            {deploy.error instanceof ApiError && deploy.error.status === 409 && (
              <p className="text-sm">Someone deployed meanwhile: see the history below, then review your change against it.</p>
            )}
            {deploy.isSuccess && (
              <p className="text-sm text-emerald-700" role="status">
                Deployed v{deploy.data.version}.
              </p>
            )}
          </div>
        </Card>
        <Diagram source={text} />
        <History tenant={tenant} />
      </div>
    </div>
  );
}

function Editor({
  initial,
  tenant,
  onChange,
  onPlan,
}: {
  initial: string;
  tenant: string;
  onChange: (source: string) => void;
  onPlan: (plan: Plan | null, error: unknown) => void;
}) {
  const host = useRef<HTMLDivElement>(null);
  const callbacks = useRef({ onChange, onPlan });
  useEffect(() => {
    callbacks.current = { onChange, onPlan };
  });
  useEffect(() => {
    // the server's checker is the linter: plan_schema answers the plan, or 422 with each problem's line
    const check = linter(
      async (view): Promise<Diagnostic[]> => {
        const doc = view.state.doc;
        try {
          const plan = await callFunction<Plan>("plan_schema", { tenant, source: doc.toString(), allow_destructive: true });
          callbacks.current.onPlan(plan, null);
          return [];
        } catch (error) {
          callbacks.current.onPlan(null, error);
          if (!(error instanceof ApiError)) return [];
          return error.details.map((problem) => {
            const line = doc.line(Math.min(Math.max(problem.line ?? 1, 1), doc.lines));
            return { from: line.from, to: line.to, severity: "error", message: `${problem.path ? `${problem.path}: ` : ""}${problem.message}` };
          });
        }
      },
      { delay: 400 },
    );
    const view = new EditorView({
      doc: initial,
      parent: host.current!,
      extensions: [
        basicSetup,
        yaml(),
        yamlLanguage.data.of({ autocomplete: yamlCompletion() }),
        hoverTooltip(yamlSchemaHover()),
        stateExtensions(formatSchema as Parameters<typeof stateExtensions>[0]),
        lintGutter(),
        check,
        EditorView.updateListener.of((update) => {
          if (update.docChanged) callbacks.current.onChange(update.state.doc.toString());
        }),
      ],
    });
    return () => view.destroy();
  }, [initial, tenant]);
  return <div ref={host} className="min-h-[24rem] overflow-hidden rounded-md border border-slate-300 text-sm" data-testid="schema-editor" />;
}

/** Entities and their refs, read from the YAML being edited (a quick look, not a parser: the server checks). */
function Diagram({ source }: { source: string }) {
  const entities = new Map<string, string[]>();
  let inEntities = false;
  let current: string | null = null;
  for (const line of source.split("\n")) {
    if (/^entities:/.test(line)) inEntities = true;
    else if (/^\S/.test(line)) inEntities = false;
    const entity = inEntities ? /^ {2}([A-Za-z_][\w]*):\s*$/.exec(line) : null;
    if (entity) entities.set((current = entity[1]), []);
    const ref = current && /\bto:\s*([A-Za-z_][\w]*)/.exec(line);
    if (ref && current) entities.get(current)!.push(ref[1]);
  }
  if (entities.size === 0) return null;
  return (
    <Card title="Entities">
      <ul className="flex flex-wrap gap-2 text-sm" data-testid="entity-diagram">
        {[...entities].map(([name, refs]) => (
          <li key={name} className="rounded-md border border-slate-300 px-2 py-1">
            <strong>{name}</strong>
            {refs.length > 0 && <span className="text-slate-500"> → {refs.join(", ")}</span>}
          </li>
        ))}
      </ul>
    </Card>
  );
}

function History({ tenant }: { tenant: Tenant }) {
  const client = useQueryClient();
  const [open, setOpen] = useState<number | null>(null);
  const history = useQuery({
    queryKey: ["history", tenant.id],
    queryFn: () => callFunction<Version[]>("schema_history", { tenant: tenant.slug }),
  });
  const rollback = useMutation({
    mutationFn: (version: number) => {
      const latest = history.data![history.data!.length - 1];
      return callFunction<{ version: number }>("rollback_schema", {
        tenant: tenant.slug,
        version,
        expected_checksum: latest.checksum,
        allow_destructive: true,
      });
    },
    onSuccess: () => {
      client.invalidateQueries({ queryKey: ["history", tenant.id] });
      client.invalidateQueries({ queryKey: ["schema", tenant.id] });
    },
  });
  if (history.isPending) return <Spinner />;
  if (history.error) return <ErrorText error={history.error} />;
  const latest = history.data.at(-1)?.version;
  return (
    <Card title="History">
      <ErrorText error={rollback.error} />
      <ol className="space-y-1 text-sm" data-testid="schema-history">
        {[...history.data].reverse().map((v) => (
          <li key={v.version} className="rounded border border-slate-200 p-2">
            <div className="flex flex-wrap items-center justify-between gap-2">
              <button type="button" className="text-left" onClick={() => setOpen(open === v.version ? null : v.version)} aria-expanded={open === v.version}>
                <strong>v{v.version}</strong> <span className="text-slate-500">{new Date(v.created_at).toLocaleString()} · {v.actor}</span>
              </button>
              {v.version !== latest && (
                <Button variant="secondary" busy={rollback.isPending && rollback.variables === v.version} onClick={() => rollback.mutate(v.version)}>
                  Roll back to v{v.version}
                </Button>
              )}
            </div>
            {open === v.version && <Code>{v.diff || "(no textual change)"}</Code>}
          </li>
        ))}
      </ol>
    </Card>
  );
}
