// Copies the browser assets the gateway serves from node_modules into this folder (committed, shipped in the wheel).
import { copyFileSync, mkdirSync } from "node:fs";

const files = {
  "graphiql/graphiql.min.js": "graphiql/graphiql.min.js",
  "graphiql/graphiql.min.css": "graphiql/graphiql.min.css",
  "graphiql/react.production.min.js": "react/umd/react.production.min.js",
  "graphiql/react-dom.production.min.js": "react-dom/umd/react-dom.production.min.js",
  "swagger-ui/swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",
  "swagger-ui/swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
};
for (const [target, source] of Object.entries(files)) {
  mkdirSync(new URL(target.split("/")[0] + "/", import.meta.url), { recursive: true });
  copyFileSync(new URL(`node_modules/${source}`, import.meta.url), new URL(target, import.meta.url));
}
