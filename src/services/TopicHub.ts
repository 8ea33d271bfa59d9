/**
 * TopicHub: the registry of topic actors on this node. An actor starts with its first
 * subscription (`acquire`) and retires after `topicIdleTtlMs` without one. Local commits hand their
 * entries here directly (`deliverCommitted`); the JournalFeed routes `(topic, seq)` notifications
 * of every commit (this node's and others') here too. Topics without an actor on this node are
 * ignored (nobody here is listening, and a later subscriber reads the journal).
 */
import { Context, Deferred, Effect, Layer, Metric, Schedule } from "effect"
import type { SqlError } from "effect/sql/SqlError"
import { KhalaConfig } from "../layers/Config.ts"
import { Journal, type StoredEntry } from "./Journal.ts"
import { flushDelivered, topicQueueDepth } from "./Metrics.ts"
import { Timers } from "./Timers.ts"
import { type ActorEnv, type JoinResult, type Subscriber, TopicActor, type TopicStats } from "./TopicActor.ts"

/** Messages an actor's mailbox holds before hand-overs and resyncs are refused (joins and leaves never are). */
const MAILBOX_CAPACITY = 4096

/** One subscription's hold on a topic actor. */
export interface TopicLease {
  readonly topic: string
  /** Hands the subscriber over to live delivery after its replay reached `lastSeq`. */
  readonly join: (
    subscriber: Subscriber,
    epoch: string,
    lastSeq: number,
    minHeadSeq: number
  ) => Effect.Effect<JoinResult, SqlError>
  /** Ends the subscription (idempotent); `evicted` counts a slow-consumer eviction. */
  readonly release: (subscriber: Subscriber, evicted?: boolean) => Effect.Effect<void>
}

/** A lease as one object per subscription (no closures: idle subscriptions are many). */
class ActorLease implements TopicLease {
  private readonly actor: TopicActor
  private released = false
  constructor(actor: TopicActor) {
    this.actor = actor
  }

  get topic(): string {
    return this.actor.topic
  }

  join(subscriber: Subscriber, epoch: string, lastSeq: number, minHeadSeq: number): Effect.Effect<JoinResult, SqlError> {
    return Effect.gen({ self: this }, function*() {
      const reply = yield* Deferred.make<JoinResult, SqlError>()
      const offered = this.actor.offerControl({ _tag: "Join", subscriber, epoch, lastSeq, minHeadSeq, reply })
      // Shut: the actor failed (a live lease keeps it from retiring); nothing would answer.
      if (!offered) return yield* Effect.die(new Error(`topic ${this.actor.topic}: its actor failed`))
      return yield* Deferred.await(reply)
    })
  }

  release(subscriber: Subscriber, evicted = false): Effect.Effect<void> {
    return Effect.sync(() => {
      if (this.released) return
      this.released = true
      this.actor.refCount--
      // False only if the actor failed: then there is nothing to leave.
      this.actor.offerControl({ _tag: "Leave", subscriber, evicted })
    })
  }
}

export interface TopicReport extends TopicStats {
  readonly topic: string
  readonly queueDepth: number
}

export class TopicHub extends Context.Service<TopicHub, {
  readonly acquire: (topic: string) => Effect.Effect<TopicLease>
  readonly notify: (topic: string, seq: number) => Effect.Effect<void>
  /**
   * Entries a local transaction just committed (by topic, in seq order, with the journal epoch
   * they were written in), straight to the actors of their topics. An actor on another epoch
   * does not deliver them; it re-reads the journal.
   */
  readonly deliverCommitted: (
    committed: { readonly epoch: string; readonly topics: ReadonlyMap<string, ReadonlyArray<StoredEntry>> }
  ) => void
  /** Every local topic with the head its actor has reached (for the feed's reconciler). */
  readonly heads: () => ReadonlyArray<readonly [topic: string, headSeq: number]>
  /** After a listener reconnect or an epoch change: every actor re-reads its position. */
  readonly resyncAll: (epoch: string | undefined) => Effect.Effect<void>
  readonly report: (limit: number) => Effect.Effect<ReadonlyArray<TopicReport>>
  readonly activeTopics: Effect.Effect<number>
}>()("khala/services/TopicHub") {
  static readonly layer = Layer.effect(
    TopicHub,
    Effect.gen(function*() {
      const config = yield* KhalaConfig
      const journal = yield* Journal
      const scope = yield* Effect.scope
      // The delivery counters are tallied without effects on the hot path; publish them every second.
      yield* flushDelivered.pipe(Effect.repeat(Schedule.spaced("1 second")), Effect.forkIn(scope))
      const actors = new Map<string, TopicActor>()
      const env: ActorEnv = {
        journal,
        settings: {
          ringCapacity: config.topicRingEntries,
          maxFrameBytes: config.maxFrameBytes,
          maxItemsPerFrame: 512,
          readBatch: 1000
        },
        idleTtlMs: config.topicIdleTtlMs,
        timers: yield* Timers.forClock,
        scope,
        context: yield* Effect.context<never>(),
        tryRetire: (actor) => {
          if (actor.refCount > 0) return false
          if (actors.get(actor.topic) === actor) actors.delete(actor.topic)
          return true
        },
        onStopped: (actor) => void (actors.get(actor.topic) === actor && actors.delete(actor.topic))
      }

      const start = (topic: string) => {
        const actor = new TopicActor(topic, env, MAILBOX_CAPACITY)
        // Registered before the actor reads its position: no notification can fall between.
        actors.set(topic, actor)
        // The actor keeps a fiber only while its mailbox has work.
        actor.launch()
        return actor
      }

      const acquire = (topic: string) =>
        Effect.sync(() => {
          const handle = actors.get(topic) ?? start(topic)
          handle.refCount++
          return new ActorLease(handle)
        })

      const notify = (topic: string, seq: number) =>
        Effect.sync(() => {
          const handle = actors.get(topic)
          if (handle) handle.notify(seq)
        })

      const deliverCommitted = (
        committed: { readonly epoch: string; readonly topics: ReadonlyMap<string, ReadonlyArray<StoredEntry>> }
      ) => {
        for (const [topic, list] of committed.topics) {
          const handle = actors.get(topic)
          if (!handle || list.length === 0) continue
          // A full mailbox falls back to the notification path.
          if (!handle.offer({ _tag: "Entries", epoch: committed.epoch, entries: list })) {
            handle.notify(list[list.length - 1]!.seq)
          }
        }
      }

      const resyncAll = (epoch: string | undefined) =>
        Effect.sync(() => {
          for (const handle of actors.values()) handle.resync(epoch)
        })

      const report = (limit: number) =>
        Effect.gen(function*() {
          const rows: Array<TopicReport> = [...actors.values()].map((h) => ({
            topic: h.topic,
            ...h.stats,
            queueDepth: h.queueDepth
          }))
          rows.sort((a, b) => b.subscribers - a.subscribers || b.deliveredFrames - a.deliveredFrames)
          yield* Metric.update(topicQueueDepth, rows.reduce((n, r) => n + r.queueDepth, 0))
          return rows.slice(0, Math.max(0, limit))
        })

      const heads = () => Array.from(actors.values(), (h) => [h.topic, h.headSeq] as const)

      return TopicHub.of({
        acquire,
        heads,
        notify,
        deliverCommitted,
        resyncAll,
        report,
        activeTopics: Effect.sync(() => actors.size)
      })
    })
  )
}


