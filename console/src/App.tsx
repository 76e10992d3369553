import { useQueryClient } from "@tanstack/react-query";
import { lazy, Suspense } from "react";
import { Link, Route, Router, Switch } from "wouter";
import { isPlatformAdmin, signOut } from "./api";
import { AcceptInvitation } from "./pages/AcceptInvitation";
import { SignIn } from "./pages/SignIn";
import { TenantPage } from "./pages/Tenant";
import { Tenants } from "./pages/Tenants";
import { useSession } from "./session";
import { Button, Spinner } from "./ui";

const PlatformPage = lazy(() => import("./pages/Platform"));

export function App() {
  const current = useSession();
  const client = useQueryClient();
  return (
    <Router base="/admin">
      <Switch>
        <Route path="/accept">
          <AcceptInvitation />
        </Route>
        <Route>
          {!current ? (
            <SignIn />
          ) : (
            <div className="min-h-screen">
              <header className="flex flex-wrap items-center justify-between gap-2 border-b border-slate-200 bg-white px-4 py-2">
                <nav className="flex items-center gap-4 text-sm">
                  <Link href="/" className="text-base font-semibold text-indigo-700">
                    BackSaas
                  </Link>
                  <Link href="/">Tenants</Link>
                  {isPlatformAdmin(current) && <Link href="/platform">Platform</Link>}
                </nav>
                <div className="flex items-center gap-3 text-sm">
                  <span className="text-slate-600" data-testid="signed-in-as">
                    {current.user.email}
                  </span>
                  <Button variant="secondary" onClick={() => signOut().finally(() => client.clear())}>
                    Sign out everywhere
                  </Button>
                </div>
              </header>
              <main className="mx-auto max-w-6xl p-4">
                <Suspense fallback={<Spinner />}>
                  <Switch>
                    <Route path="/">
                      <Tenants />
                    </Route>
                    <Route path="/platform">
                      <PlatformPage />
                    </Route>
                    <Route path="/t/:slug/:tab?">{(params) => <TenantPage slug={params.slug} tab={params.tab ?? "overview"} />}</Route>
                    <Route>
                      <p>Nothing here. <Link href="/">Back to your tenants</Link></p>
                    </Route>
                  </Switch>
                </Suspense>
              </main>
            </div>
          )}
        </Route>
      </Switch>
    </Router>
  );
}
