/**
 * Worker heartbeat state (SPEC §10 "Workers"), computed at read time from an injected clock:
 * `missing` before any heartbeat (age null), `fresh` while age ≤ stale-after, then `stale`.
 */
export type HeartbeatState = "fresh" | "stale" | "missing"

export interface HeartbeatView {
  readonly heartbeat_state: HeartbeatState
  readonly heartbeat_age_ms: number | null
  readonly heartbeat_stale_after_ms: number
}

export const heartbeatView = (lastHeartbeatAtMs: number | undefined, nowMs: number, staleAfterMs: number): HeartbeatView => {
  if (lastHeartbeatAtMs === undefined) {
    return { heartbeat_state: "missing", heartbeat_age_ms: null, heartbeat_stale_after_ms: staleAfterMs }
  }
  const age = Math.max(0, nowMs - lastHeartbeatAtMs)
  return {
    heartbeat_state: age <= staleAfterMs ? "fresh" : "stale",
    heartbeat_age_ms: age,
    heartbeat_stale_after_ms: staleAfterMs
  }
}
