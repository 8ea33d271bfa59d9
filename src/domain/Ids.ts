/**
 * Entity and user ids (SPEC §10 "Topics"): `[A-Za-z0-9._:-]{1,128}`. Ids become parts of topic
 * names and doc keys, so every id that enters the system is checked here first.
 */
export const ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/

export const isValidId = (id: unknown): id is string => typeof id === "string" && ID_PATTERN.test(id)
