import tailwindcss from "@tailwindcss/vite";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// The bundle is committed inside the Python package (gateway/console/) and served by the gateway at /admin/,
// so `pip install` needs no Node.js; CI rebuilds it from a clean `npm ci` and diffs it.
export default defineConfig({
  base: "/admin/",
  plugins: [react(), tailwindcss()],
  build: {
    outDir: "../gateway/console",
    emptyOutDir: true,
    chunkSizeWarningLimit: 900,
  },
  server: { proxy: { "/api": "http://127.0.0.1:8000" } },
});
