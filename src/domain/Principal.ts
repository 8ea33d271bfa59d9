/**
 * Principal: who a verified sync token speaks for (claims `sub` and `scope`, SPEC §10 "Tokens").
 */
export interface Principal {
  readonly userId: string
  /** `sync:admin`: may read every well-formed topic, including not-yet-existing entities. */
  readonly isAdmin: boolean
  /** `sync:read` or `sync:admin`. Without it every subscribe is `forbidden_topic`. */
  readonly canRead: boolean
}
