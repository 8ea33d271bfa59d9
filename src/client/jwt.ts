/**
 * Reads claims from a JWT's payload WITHOUT verifying it (the server verifies): the client only
 * needs `exp` to schedule a refresh. Browser-safe: `atob` and `TextDecoder`, no `Buffer`.
 */

/** Decodes base64url (with or without padding) to bytes; `undefined` if it is not base64url. */
export const base64UrlDecode = (s: string): Uint8Array | undefined => {
  if (!/^[A-Za-z0-9_-]*={0,2}$/.test(s)) return undefined
  const b64 = s.replace(/=+$/, "").replace(/-/g, "+").replace(/_/g, "/")
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4)
  try {
    const bin = atob(padded)
    const out = new Uint8Array(bin.length)
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i)
    return out
  } catch {
    return undefined
  }
}

/** The JSON payload (claims) of a compact JWS; `undefined` for anything else. */
export const jwtClaims = (token: string): Record<string, unknown> | undefined => {
  const parts = token.split(".")
  if (parts.length !== 3) return undefined
  const bytes = base64UrlDecode(parts[1]!)
  if (bytes === undefined) return undefined
  try {
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes))
    return typeof claims === "object" && claims !== null && !Array.isArray(claims)
      ? (claims as Record<string, unknown>)
      : undefined
  } catch {
    return undefined
  }
}

/** `exp` (seconds since the epoch) as milliseconds; `undefined` when absent or not a number. */
export const jwtExpiresAtMs = (token: string): number | undefined => {
  const exp = jwtClaims(token)?.["exp"]
  return typeof exp === "number" && Number.isFinite(exp) ? exp * 1000 : undefined
}
