// The console's small component kit: Tailwind-styled primitives, with Radix for what needs focus management
// and keyboard handling (dialogs, tabs), in the manner of shadcn/ui.
import * as DialogPrimitive from "@radix-ui/react-dialog";
import type { ButtonHTMLAttributes, InputHTMLAttributes, ReactNode, SelectHTMLAttributes, TextareaHTMLAttributes } from "react";
import { ApiError } from "./api";

const cx = (...names: (string | false | null | undefined)[]) => names.filter(Boolean).join(" ");

type Variant = "primary" | "secondary" | "danger" | "ghost";
const VARIANTS: Record<Variant, string> = {
  primary: "bg-indigo-600 text-white hover:bg-indigo-500 disabled:bg-indigo-300",
  secondary: "bg-white text-slate-800 ring-1 ring-slate-300 hover:bg-slate-100 disabled:text-slate-400",
  danger: "bg-rose-600 text-white hover:bg-rose-500 disabled:bg-rose-300",
  ghost: "text-slate-700 hover:bg-slate-200",
};

export function Button({
  variant = "primary",
  busy = false,
  className,
  children,
  ...props
}: ButtonHTMLAttributes<HTMLButtonElement> & { variant?: Variant; busy?: boolean }) {
  return (
    <button
      {...props}
      disabled={props.disabled || busy}
      aria-busy={busy}
      className={cx(
        "inline-flex items-center gap-2 rounded-md px-3 py-1.5 text-sm font-medium focus:outline-none focus-visible:ring-2 focus-visible:ring-indigo-500",
        VARIANTS[variant],
        className,
      )}
    >
      {busy && <Spinner />}
      {children}
    </button>
  );
}

export function Spinner() {
  return <span role="status" aria-label="working" className="inline-block h-3 w-3 animate-spin rounded-full border-2 border-current border-r-transparent" />;
}

const FIELD = "block w-full rounded-md border border-slate-300 bg-white px-2 py-1.5 text-sm focus:border-indigo-500 focus:outline-none focus:ring-1 focus:ring-indigo-500";

export function Input(props: InputHTMLAttributes<HTMLInputElement>) {
  return <input {...props} className={cx(FIELD, props.className)} />;
}

export function Select(props: SelectHTMLAttributes<HTMLSelectElement>) {
  return <select {...props} className={cx(FIELD, props.className)} />;
}

export function TextArea(props: TextareaHTMLAttributes<HTMLTextAreaElement>) {
  return <textarea {...props} className={cx(FIELD, "font-mono", props.className)} />;
}

export function Field({ label, error, hint, children }: { label: string; error?: string; hint?: ReactNode; children: ReactNode }) {
  return (
    <label className="block space-y-1 text-sm">
      <span className="font-medium text-slate-700">{label}</span>
      {children}
      {hint && !error && <span className="block text-xs text-slate-500">{hint}</span>}
      {error && <span className="block text-xs text-rose-600">{error}</span>}
    </label>
  );
}

export function Card({ title, actions, children }: { title?: ReactNode; actions?: ReactNode; children: ReactNode }) {
  return (
    <section className="min-w-0 rounded-lg border border-slate-200 bg-white p-4 shadow-sm">
      {(title || actions) && (
        <header className="mb-3 flex flex-wrap items-center justify-between gap-2">
          {title && <h2 className="text-base font-semibold">{title}</h2>}
          {actions && <div className="flex gap-2">{actions}</div>}
        </header>
      )}
      {children}
    </section>
  );
}

const STATUS_COLOURS: Record<string, string> = {
  active: "bg-emerald-100 text-emerald-800",
  pending: "bg-amber-100 text-amber-800",
  suspended: "bg-rose-100 text-rose-800",
  failed: "bg-rose-100 text-rose-800",
  deleted: "bg-slate-200 text-slate-700",
};

export function Badge({ value }: { value: string }) {
  return (
    <span data-status={value} className={cx("rounded-full px-2 py-0.5 text-xs font-medium", STATUS_COLOURS[value] ?? "bg-slate-100 text-slate-700")}>
      {value}
    </span>
  );
}

/** The API's `message` (and each offending field) of a failed action. */
export function ErrorText({ error }: { error: unknown }) {
  if (!error) return null;
  const problem = error instanceof ApiError ? error : null;
  return (
    <div role="alert" className="rounded-md border border-rose-200 bg-rose-50 p-2 text-sm text-rose-800">
      <p>{problem ? problem.message : String((error as Error).message ?? error)}</p>
      {problem && problem.details.length > 0 && (
        <ul className="mt-1 list-disc pl-5 text-xs">
          {problem.details.map((d, i) => (
            <li key={i}>
              {d.field ?? d.path ? <code>{d.field ?? d.path}</code> : null} {d.message}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

export function Dialog({
  open,
  onOpenChange,
  title,
  children,
}: {
  open: boolean;
  onOpenChange: (open: boolean) => void;
  title: string;
  children: ReactNode;
}) {
  return (
    <DialogPrimitive.Root open={open} onOpenChange={onOpenChange}>
      <DialogPrimitive.Portal>
        <DialogPrimitive.Overlay className="fixed inset-0 bg-slate-900/40" />
        <DialogPrimitive.Content className="fixed left-1/2 top-1/2 max-h-[90vh] w-[min(32rem,95vw)] -translate-x-1/2 -translate-y-1/2 overflow-auto rounded-lg bg-white p-5 shadow-xl focus:outline-none">
          <DialogPrimitive.Title className="mb-3 text-lg font-semibold">{title}</DialogPrimitive.Title>
          <DialogPrimitive.Description className="sr-only">{title}</DialogPrimitive.Description>
          {children}
        </DialogPrimitive.Content>
      </DialogPrimitive.Portal>
    </DialogPrimitive.Root>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <p className="py-6 text-center text-sm text-slate-500">{children}</p>;
}

export function Code({ children }: { children: ReactNode }) {
  return <pre className="overflow-x-auto rounded-md bg-slate-900 p-3 text-xs text-slate-100">{children}</pre>;
}
