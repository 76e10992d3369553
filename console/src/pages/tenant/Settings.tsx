import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { useLocation } from "wouter";
import { callFunction, PLATFORM, query, request, type Tenant } from "../../api";
import { Button, Card, ErrorText, Field, Input, TextArea } from "../../ui";

/** The tenant's settings: name and CORS origins, branding, custom domains, and deleting it. */
export function Settings({ tenant }: { tenant: Tenant }) {
  return (
    <div className="grid gap-4 lg:grid-cols-2">
      <General tenant={tenant} />
      <Branding tenant={tenant} />
      <Domains tenant={tenant} />
      <Delete tenant={tenant} />
    </div>
  );
}

/** Name and CORS origins (platform `update_tenant`; owners and admins). */
function General({ tenant }: { tenant: Tenant }) {
  const client = useQueryClient();
  const cors = (tenant.settings.cors as { allowed_origins?: string[] } | undefined)?.allowed_origins ?? [];
  const [name, setName] = useState(tenant.name);
  const [origins, setOrigins] = useState(cors.join("\n"));
  const save = useMutation({
    mutationFn: () => {
      const allowed = origins.split("\n").map((o) => o.trim()).filter(Boolean);
      const settings = { ...tenant.settings, cors: allowed.length ? { allowed_origins: allowed } : undefined };
      if (!allowed.length) delete settings.cors;
      return callFunction("update_tenant", { tenant: tenant.slug, name, settings });
    },
    onSuccess: () => client.invalidateQueries({ queryKey: ["tenant", tenant.slug] }),
  });

  function submit(event: FormEvent) {
    event.preventDefault();
    save.mutate();
  }

  return (
    <Card title="General">
      <form onSubmit={submit} className="max-w-xl space-y-3">
        <Field label="Name">
          <Input required value={name} onChange={(e) => setName(e.target.value)} />
        </Field>
        <Field label="Browser origins allowed (CORS), one per line" hint="Empty: any origin may call the APIs.">
          <TextArea rows={4} value={origins} onChange={(e) => setOrigins(e.target.value)} placeholder="https://app.example.com" />
        </Field>
        <ErrorText error={save.error} />
        {save.isSuccess && <p className="text-sm text-emerald-700">Saved.</p>}
        <Button type="submit" busy={save.isPending}>
          Save
        </Button>
      </form>
    </Card>
  );
}

interface BrandingSettings {
  colors?: Record<string, string>;
  logo_url?: string;
  favicon_url?: string;
  custom_css?: string;
}

/** White-label (plan feature `custom_branding`): colours, logo, favicon and CSS, served at `{tenant}/branding`. */
function Branding({ tenant }: { tenant: Tenant }) {
  const client = useQueryClient();
  const current = (tenant.settings.branding ?? {}) as BrandingSettings;
  const [primary, setPrimary] = useState(current.colors?.primary ?? "");
  const [logo, setLogo] = useState(current.logo_url ?? "");
  const [favicon, setFavicon] = useState(current.favicon_url ?? "");
  const [css, setCss] = useState(current.custom_css ?? "");
  const save = useMutation({
    mutationFn: () => {
      const branding: BrandingSettings = {
        ...current,
        colors: { ...current.colors, ...(primary ? { primary } : {}) },
        ...(logo ? { logo_url: logo } : {}),
        ...(favicon ? { favicon_url: favicon } : {}),
        ...(css ? { custom_css: css } : {}),
      };
      if (!primary && branding.colors) delete branding.colors.primary;
      if (!logo) delete branding.logo_url;
      if (!favicon) delete branding.favicon_url;
      if (!css) delete branding.custom_css;
      return callFunction("update_tenant", { tenant: tenant.slug, settings: { ...tenant.settings, branding } });
    },
    onSuccess: () => client.invalidateQueries({ queryKey: ["tenant", tenant.slug] }),
  });
  return (
    <Card title="Branding">
      <form
        className="space-y-3"
        onSubmit={(e) => {
          e.preventDefault();
          save.mutate();
        }}
      >
        <Field label="Primary colour" hint="#rrggbb">
          <Input value={primary} onChange={(e) => setPrimary(e.target.value)} placeholder="#4f46e5" />
        </Field>
        <Field label="Logo URL (https)">
          <Input value={logo} onChange={(e) => setLogo(e.target.value)} />
        </Field>
        <Field label="Favicon URL (https)">
          <Input value={favicon} onChange={(e) => setFavicon(e.target.value)} />
        </Field>
        <Field label="Custom CSS" hint="Plain CSS only: checked by the server.">
          <TextArea rows={4} value={css} onChange={(e) => setCss(e.target.value)} />
        </Field>
        <ErrorText error={save.error} />
        {save.isSuccess && <p className="text-sm text-emerald-700">Saved.</p>}
        <Button type="submit" busy={save.isPending}>
          Save branding
        </Button>
      </form>
    </Card>
  );
}

interface Domain {
  id: string;
  domain: string;
  token: string;
  verified_at: string | null;
  last_error: string | null;
}

/** Custom domains (plan feature `custom_domain`): add, prove with a DNS TXT record, remove. */
function Domains({ tenant }: { tenant: Tenant }) {
  const client = useQueryClient();
  const [domain, setDomain] = useState("");
  const domains = useQuery({
    queryKey: ["domains", tenant.id],
    queryFn: () =>
      request<Domain[]>(`${PLATFORM}/rest/v1/tenant_domains${query({ select: "id,domain,token,verified_at,last_error", tenant_id: `eq.${tenant.id}`, order: "domain" })}`),
  });
  const refresh = () => client.invalidateQueries({ queryKey: ["domains", tenant.id] });
  const add = useMutation({ mutationFn: () => callFunction("add_domain", { tenant: tenant.slug, domain }), onSuccess: () => { setDomain(""); refresh(); } });
  const verify = useMutation({ mutationFn: (name: string) => callFunction("verify_domain", { tenant: tenant.slug, domain: name }), onSettled: refresh });
  const remove = useMutation({ mutationFn: (name: string) => callFunction("remove_domain", { tenant: tenant.slug, domain: name }), onSuccess: refresh });
  return (
    <Card title="Custom domains">
      <ErrorText error={domains.error ?? add.error ?? verify.error ?? remove.error} />
      <ul className="space-y-2 text-sm">
        {domains.data?.map((d) => (
          <li key={d.id} className="rounded border border-slate-200 p-2">
            <div className="flex flex-wrap items-center justify-between gap-2">
              <strong>{d.domain}</strong>
              <span className="flex gap-1">
                {!d.verified_at && (
                  <Button variant="secondary" busy={verify.isPending && verify.variables === d.domain} onClick={() => verify.mutate(d.domain)}>
                    Verify
                  </Button>
                )}
                <Button variant="ghost" busy={remove.isPending && remove.variables === d.domain} onClick={() => remove.mutate(d.domain)}>
                  Remove
                </Button>
              </span>
            </div>
            {d.verified_at ? (
              <p className="text-emerald-700">Verified: the APIs are served at https://{d.domain}/</p>
            ) : (
              <p className="break-all text-slate-600">
                Add a TXT record <code>_backsaas-challenge.{d.domain}</code> = <code>backsaas-verify={d.token}</code>, then verify.
              </p>
            )}
            {d.last_error && !d.verified_at && <p className="text-rose-700">{d.last_error}</p>}
          </li>
        ))}
      </ul>
      <form
        className="mt-3 flex flex-wrap items-end gap-2"
        onSubmit={(e) => {
          e.preventDefault();
          add.mutate();
        }}
      >
        <Field label="Domain">
          <Input required value={domain} onChange={(e) => setDomain(e.target.value.trim())} placeholder="api.example.com" />
        </Field>
        <Button type="submit" busy={add.isPending}>
          Add domain
        </Button>
      </form>
    </Card>
  );
}

/** Deleting the tenant (its owners): it stops serving at once and can be restored until it is purged. */
function Delete({ tenant }: { tenant: Tenant }) {
  const client = useQueryClient();
  const [, navigate] = useLocation();
  const [confirm, setConfirm] = useState("");
  const remove = useMutation({
    mutationFn: () => callFunction("delete_tenant", { tenant: tenant.slug }),
    onSuccess: () => {
      client.invalidateQueries({ queryKey: ["tenants"] });
      navigate("/");
    },
  });
  return (
    <Card title="Delete this tenant">
      <p className="mb-2 text-sm text-slate-600">Its APIs stop at once; a platform admin or an owner can restore it until it is purged.</p>
      <form
        className="flex flex-wrap items-end gap-2"
        onSubmit={(e) => {
          e.preventDefault();
          remove.mutate();
        }}
      >
        <Field label={`Type ${tenant.slug} to confirm`}>
          <Input value={confirm} onChange={(e) => setConfirm(e.target.value)} />
        </Field>
        <Button type="submit" variant="danger" disabled={confirm !== tenant.slug} busy={remove.isPending}>
          Delete
        </Button>
      </form>
      <ErrorText error={remove.error} />
    </Card>
  );
}
