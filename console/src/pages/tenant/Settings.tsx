import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { callFunction, type Tenant } from "../../api";
import { Button, Card, ErrorText, Field, Input, TextArea } from "../../ui";

/** The tenant's name and CORS origins (platform `update_tenant`; owners and admins). */
export function Settings({ tenant }: { tenant: Tenant }) {
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
    <Card title="Settings">
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
