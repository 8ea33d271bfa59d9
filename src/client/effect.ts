/**
 * Effect API of the Khala client: the `Khala` service (scoped: the client closes with its scope),
 * document changes as a `Stream`, `awaitSeq` as an `Effect` with a typed `AwaitSeqTimeout` (timed
 * by Effect's `Clock`, so `TestClock` drives it), connection state and client events as streams.
 * A thin layer over the Promise client of `./client.ts`; browser-safe like it.
 */
import { Cause, Context, Duration, Effect, Layer, Queue, Stream } from "effect"
import type { Scope } from "effect"
import { createKhalaClient } from "./client.ts"
import type { ClientEvent, ConnectionState, DocumentChange, KhalaClient, KhalaClientOptions, SubscribeOptions } from "./client.ts"
import { AwaitSeqTimeout, KhalaClientClosed, KhalaNotSubscribed, KhalaServerError, KhalaSnapshotError } from "./errors.ts"
import type { KhalaTopicError } from "./errors.ts"
import type { KhalaDocument } from "./state.ts"
import type { Watermark } from "./store.ts"

export type AwaitSeqError = AwaitSeqTimeout | KhalaNotSubscribed | KhalaTopicError

export interface KhalaService {
  /** The underlying Promise client. */
  readonly client: KhalaClient
  /**
   * The topic's changes while the stream runs (subscribing on start, unsubscribing when it ends).
   * Fails when the subscription ends for good (`forbidden_topic`, …) or the client is closed.
   */
  readonly changes: (
    topic: string,
    options?: Pick<SubscribeOptions, "startFrom">
  ) => Stream.Stream<DocumentChange, KhalaTopicError>
  /**
   * Holds a subscription for the current scope without consuming its changes (e.g. before
   * `awaitSeq` or `documents`); callbacks in `options` are called as with the Promise API.
   */
  readonly subscribe: (topic: string, options?: SubscribeOptions) => Effect.Effect<void, KhalaClientClosed, Scope.Scope>
  readonly documents: (topic: string) => Effect.Effect<ReadonlyMap<string, KhalaDocument>>
  readonly watermark: (topic: string) => Effect.Effect<Watermark | undefined>
  /** Succeeds once the topic's applied watermark is ≥ `seq`; `AwaitSeqTimeout` after `timeout`. */
  readonly awaitSeq: (topic: string, seq: number, timeout: Duration.Input) => Effect.Effect<void, AwaitSeqError>
  readonly state: Effect.Effect<ConnectionState>
  /** The current state, then every change. */
  readonly stateChanges: Stream.Stream<ConnectionState>
  readonly events: Stream.Stream<ClientEvent>
}

const isAwaitSeqError = (u: unknown): u is AwaitSeqError =>
  u instanceof AwaitSeqTimeout || u instanceof KhalaNotSubscribed || u instanceof KhalaServerError ||
  u instanceof KhalaSnapshotError || u instanceof KhalaClientClosed

/** The Effect view of an existing Promise client (its lifetime stays the caller's). */
export const fromClient = (client: KhalaClient): KhalaService => ({
  client,
  changes: (topic, options = {}) =>
    Stream.callback<DocumentChange, KhalaTopicError>((queue) =>
      Effect.acquireRelease(
        Effect.try({
          try: () =>
            client.subscribe(topic, {
              ...options,
              onChange: (change) => {
                Queue.offerUnsafe(queue, change)
              },
              onError: (error) => {
                Queue.failCauseUnsafe(queue, Cause.fail(error))
              }
            }),
          catch: () => new KhalaClientClosed()
        }),
        (unsubscribe) => Effect.sync(unsubscribe)
      )
    ),
  subscribe: (topic, options = {}) =>
    Effect.acquireRelease(
      Effect.try({ try: () => client.subscribe(topic, options), catch: () => new KhalaClientClosed() }),
      (unsubscribe) => Effect.sync(unsubscribe)
    ).pipe(Effect.asVoid),
  documents: (topic) => Effect.sync(() => client.documents(topic)),
  watermark: (topic) => Effect.sync(() => client.watermark(topic)),
  awaitSeq: (topic, seq, timeout) =>
    Effect.callback<void, AwaitSeqError>((resume, signal) => {
      client.awaitSeq(topic, seq, { timeoutMs: Number.POSITIVE_INFINITY, signal }).then(
        () => resume(Effect.void),
        (e: unknown) => resume(isAwaitSeqError(e) ? Effect.fail(e) : Effect.die(e))
      )
    }).pipe(
      Effect.timeoutOrElse({
        duration: timeout,
        orElse: () =>
          Effect.suspend(() =>
            Effect.fail(
              new AwaitSeqTimeout({
                topic,
                seq,
                appliedSeq: client.watermark(topic)?.afterSeq ?? 0,
                timeoutMs: Duration.toMillis(Duration.fromInputUnsafe(timeout))
              })
            )
          )
      })
    ),
  state: Effect.sync(() => client.state),
  stateChanges: Stream.callback<ConnectionState>((queue) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        Queue.offerUnsafe(queue, client.state)
        return client.onStateChange((s) => {
          Queue.offerUnsafe(queue, s)
        })
      }),
      (off) => Effect.sync(off)
    )
  ),
  events: Stream.callback<ClientEvent>((queue) =>
    Effect.acquireRelease(
      Effect.sync(() =>
        client.onEvent((event) => {
          Queue.offerUnsafe(queue, event)
        })
      ),
      (off) => Effect.sync(off)
    )
  )
})

/** Creates a client for the current scope (closed, and its store flushed, when the scope closes). */
export const makeKhala = (options: KhalaClientOptions): Effect.Effect<KhalaService, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => createKhalaClient(options)),
    (client) => Effect.promise(() => client.close())
  ).pipe(Effect.map(fromClient))

export class Khala extends Context.Service<Khala, KhalaService>()("khala/client/Khala") {
  static readonly layer = (options: KhalaClientOptions): Layer.Layer<Khala> => Layer.effect(Khala, makeKhala(options))
}
