// The console speaks only the public APIs: the platform's auth, REST and functions, and each tenant's REST
// and GraphQL, as the signed-in platform account (a member acts in its tenants with the same token).
// No API key is ever typed into or kept by the browser; the session (access and refresh tokens) is kept in
// localStorage, as supabase-js keeps it, and refreshed (rotating the refresh token) when the access token
// expires.

export const PLATFORM = "/api/platform";
export const tenantBase = (slug: string) => `/api/tenants/${encodeURIComponent(slug)}`;

export interface Problem {
  field?: string;
  path?: string;
  line?: number | null;
  column?: number | null;
  message: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: Problem[] = [],
  ) {
    super(message);
  }
}

export interface Session {
  access_token: string;
  refresh_token: string;
  expires_at: number;
  user: { id: string; email: string; app_metadata?: { roles?: string[] } };
}

const STORAGE_KEY = "backsaas.console.session";
type Listener = (session: Session | null) => void;
const listeners = new Set<Listener>();
let current: Session | null = readStored();
let refreshing: Promise<Session | null> | null = null;

function readStored(): Session | null {
  try {
    const raw = localStorage.getItem(STORAGE_KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}

export function session(): Session | null {
  return current;
}

export function setSession(next: Session | null): void {
  current = next;
  if (next) localStorage.setItem(STORAGE_KEY, JSON.stringify(next));
  else localStorage.removeItem(STORAGE_KEY);
  listeners.forEach((listener) => listener(next));
}

export function onSession(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

async function problemOf(response: Response): Promise<ApiError> {
  let body: Record<string, unknown> = {};
  try {
    body = await response.json();
  } catch {
    // a body that is not JSON (a proxy's error page): the status speaks for it
  }
  const details = Array.isArray(body.details) ? (body.details as Problem[]) : [];
  const message =
    (body.message as string) || (body.msg as string) || (body.error_description as string) || response.statusText;
  const code = (body.code as string) || (body.error_code as string) || (body.error as string) || String(response.status);
  return new ApiError(response.status, String(code), message, details);
}

async function refresh(): Promise<Session | null> {
  const stale = current;
  if (!stale) return null;
  refreshing ??= (async () => {
    const answer = await fetch(`${PLATFORM}/auth/v1/token?grant_type=refresh_token`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: stale.refresh_token }),
    });
    const next = answer.ok ? ((await answer.json()) as Session) : null;
    setSession(next);
    return next;
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

export interface RequestOptions {
  method?: string;
  body?: unknown;
  headers?: Record<string, string>;
  anonymous?: boolean;
}

/** A JSON request with the session's token; one refresh and retry when the access token has expired. */
export async function request<T = unknown>(url: string, options: RequestOptions = {}): Promise<T> {
  const answer = await send(url, options);
  if (answer.status === 204) return undefined as T;
  const text = await answer.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

/** Like `request`, but the whole response (for headers such as Content-Range). */
export async function send(url: string, options: RequestOptions = {}): Promise<Response> {
  const attempt = (token?: string) =>
    fetch(url, {
      method: options.method ?? (options.body === undefined ? "GET" : "POST"),
      headers: {
        ...(options.body === undefined ? {} : { "Content-Type": "application/json" }),
        ...(token ? { Authorization: `Bearer ${token}` } : {}),
        ...options.headers,
      },
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
  let answer = await attempt(options.anonymous ? undefined : current?.access_token);
  if (answer.status === 401 && !options.anonymous && current) {
    const problem = await problemOf(answer.clone());
    if (problem.code === "token_expired") {
      const renewed = await refresh();
      if (!renewed) throw new ApiError(401, "session_ended", "Your session has ended; sign in again.");
      answer = await attempt(renewed.access_token);
    }
  }
  if (!answer.ok) throw await problemOf(answer);
  return answer;
}

/** A platform operation (`/api/platform/functions/v1/{name}`). */
export function callFunction<T = unknown>(name: string, payload: Record<string, unknown>): Promise<T> {
  return request<T>(`${PLATFORM}/functions/v1/${name}`, { body: payload });
}

export async function signIn(email: string, password: string): Promise<Session> {
  const next = await request<Session>(`${PLATFORM}/auth/v1/token?grant_type=password`, {
    body: { email, password },
    anonymous: true,
  });
  setSession(next);
  return next;
}

export async function signUp(email: string, password: string): Promise<Session> {
  const next = await request<Session>(`${PLATFORM}/auth/v1/signup`, { body: { email, password }, anonymous: true });
  setSession(next);
  return next;
}

/** Sign out of every device (the platform revokes all of the account's sessions). */
export async function signOut(): Promise<void> {
  try {
    await request(`${PLATFORM}/auth/v1/logout?scope=global`, { method: "POST" });
  } finally {
    setSession(null);
  }
}

export function query(params: Record<string, string | number | undefined>): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== undefined && value !== "") search.append(key, String(value));
  const text = search.toString();
  return text ? `?${text}` : "";
}

export interface Tenant {
  id: string;
  slug: string;
  name: string;
  status: string;
  status_reason: string | null;
  plan: string;
  created_at: string;
  provisioning: { steps?: string[]; failed_step?: string; error?: string; attempts?: number };
  onboarding: Record<string, string | null>;
  settings: Record<string, unknown>;
}

export const TENANT_COLUMNS = "id,slug,name,status,status_reason,plan,created_at,provisioning,onboarding,settings";

export function isPlatformAdmin(s: Session | null): boolean {
  return Boolean(s?.user.app_metadata?.roles?.includes("platform_admin"));
}

/** GraphiQL (served by the gateway on this origin) keeps its request headers in localStorage: handing it the
 * session's token there lets it run queries as the signed-in member, with no key. */
export function shareSessionWithGraphiql(): void {
  if (current) localStorage.setItem("graphiql:headers", JSON.stringify({ Authorization: `Bearer ${current.access_token}` }, null, 2));
}
