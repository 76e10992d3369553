import { useState } from "react";
import { shareSessionWithGraphiql, tenantBase, type Tenant } from "../../api";
import { Button, Card } from "../../ui";

/** GraphiQL and the OpenAPI explorer of the tenant, both served by the gateway from the installed package;
 * GraphiQL runs queries as the signed-in member. */
export default function Api({ tenant }: { tenant: Tenant }) {
  const [tool, setTool] = useState<"graphiql" | "openapi">("graphiql");
  const base = tenantBase(tenant.slug);
  shareSessionWithGraphiql();
  return (
    <Card
      title="API explorer"
      actions={
        <>
          <Button variant={tool === "graphiql" ? "primary" : "secondary"} onClick={() => setTool("graphiql")}>
            GraphiQL
          </Button>
          <Button variant={tool === "openapi" ? "primary" : "secondary"} onClick={() => setTool("openapi")}>
            OpenAPI
          </Button>
        </>
      }
    >
      <iframe
        key={tool}
        title={tool === "graphiql" ? "GraphiQL" : "OpenAPI explorer"}
        src={tool === "graphiql" ? `${base}/graphql/v1` : `${base}/rest/v1/`}
        className="h-[70vh] w-full rounded-md border border-slate-200"
      />
    </Card>
  );
}
