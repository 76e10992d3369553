import { useSyncExternalStore } from "react";
import { onSession, session, type Session } from "./api";

/** The signed-in platform session, re-rendering when it changes (sign in, refresh, sign out). */
export function useSession(): Session | null {
  return useSyncExternalStore(onSession, session);
}
