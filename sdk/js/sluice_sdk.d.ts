// Types of the Sluice plugin SDK for JavaScript (sluice_sdk.js), for TypeScript plugins and for
// editors. A table's column declarations type its rows: `out.row(table, values)` must name
// every column with a value its ClickHouse type takes, and `event.json(fields)` returns the
// payload with the required fields typed by their kinds. The contract's own types (what the
// component exports and imports) are generated from the WIT by `sluice plugin new --lang ts`.

/** An event the plugin could not handle. Throw `Permanent` or `Transient`. */
export class Failure extends Error {
  constructor(message: string, permanent?: boolean);
  readonly permanent: boolean;
}
/** The event itself is bad: the host dead-letters it at once. */
export class Permanent extends Failure {
  constructor(message: string);
}
/** Something outside the event failed: the host retries it with backoff. */
export class Transient extends Failure {
  constructor(message: string);
}

/** A ClickHouse `Date`: days since 1970-01-01. */
export class Day {
  constructor(days: number);
  readonly days: number;
}
/** A ClickHouse `DateTime`: whole seconds since the epoch, UTC. */
export class Instant {
  constructor(seconds: number);
  readonly seconds: number;
  static fromMillis(ms: number): Instant;
  /** Parses RFC 3339 (no offset means UTC); throws `Permanent` if it is not one. */
  static parse(text: string): Instant;
  /** The UTC calendar date of this instant. */
  date(): Day;
}
/** A point in time with nanosecond precision, for `DateTime64(p)` columns. */
export class Timestamp {
  constructor(nanos: bigint | number);
  readonly nanos: bigint;
  static parse(text: string): Timestamp;
  static fromMillis(ms: number): Timestamp;
  static of(v: Timestamp | Instant | Day | Date): Timestamp;
  ticks(precision: number): bigint;
  readonly seconds: number;
  date(): Day;
}
export function parseTimestampMs(text: string): number;
export function parseTimestampNs(text: string): bigint;

/** The kinds `event.json(fields)` checks, and the type each gives. */
export interface Kinds {
  string: string;
  number: number;
  integer: number;
  boolean: boolean;
  object: { [key: string]: unknown };
  array: unknown[];
}
export type Kind = keyof Kinds;
/** A payload with the fields `F` requires, typed; other fields unknown. */
export type Payload<F extends Record<string, Kind>> = { [K in keyof F]: Kinds[F[K]] } & { [key: string]: unknown };

/** One event, as the host passes it. */
export class Event {
  constructor(e: {
    id: string;
    eventType: string;
    payload: string | object;
    timestampMs?: bigint | number;
    source?: string;
    tenant?: string;
    attempt?: number;
  });
  readonly id: string;
  readonly eventType: string;
  /** Event time, ms since the epoch. */
  readonly timestampMs: bigint;
  readonly attempt: number;
  readonly source: string | undefined;
  readonly tenant: string | undefined;
  /** The payload's JSON text. */
  readonly payload: string;
  /** The payload as an object, its required fields checked (`Permanent` naming the first that
   * is missing or of another kind, in the Rust SDK's words). */
  json<const F extends Record<string, Kind> = {}>(fields?: F): Payload<F>;
}

/** What a date or time column takes: the SDK's types, a JavaScript Date, or the RFC 3339 text
 * (the host reads it), or the number the column counts. */
type Temporal = Day | Instant | Timestamp | Date | string | number | bigint;
type Unwrap<T extends string> = T extends `Nullable(${infer I})`
  ? Unwrap<I>
  : T extends `LowCardinality(${infer I})`
    ? Unwrap<I>
    : T;
/** The value a column of ClickHouse type `T` takes. */
export type ColumnValue<T extends string> = T extends `Nullable(${infer I})`
  ? ColumnValue<I> | null
  : Unwrap<T> extends 'String' | 'UUID' | 'IPv4' | 'IPv6' | `FixedString(${string})` | `Enum${string}`
    ? string | (Unwrap<T> extends `FixedString(${string})` | 'String' ? Uint8Array : never)
    : Unwrap<T> extends 'Float32' | 'Float64' | `Decimal${string}`
      ? number | (Unwrap<T> extends `Decimal${string}` ? string : never)
      : Unwrap<T> extends `${'Int' | 'UInt'}${'8' | '16' | '32'}`
        ? number
        : Unwrap<T> extends `${'Int' | 'UInt'}${string}`
          ? number | bigint | (Unwrap<T> extends `${'Int' | 'UInt'}${'128' | '256'}` ? string : never)
          : Unwrap<T> extends 'Bool'
            ? boolean
            : Unwrap<T> extends 'Date' | 'Date32' | `DateTime${string}`
              ? Temporal
              : Unwrap<T> extends `Array(${infer E})`
                ? ColumnValue<E>[]
                : Unwrap<T> extends `Map(${string})`
                  ? { [key: string]: unknown } | Map<unknown, unknown>
                  : unknown;

export type Columns = readonly (readonly [string, string])[];
/** A row of a table with columns `C`: every column, each with a value its type takes. */
export type Row<C extends Columns> = { [P in C[number] as P[0]]: ColumnValue<P[1]> };
export type Engine =
  | 'MergeTree'
  | 'AggregatingMergeTree'
  | readonly ['ReplacingMergeTree', string?]
  | readonly ['SummingMergeTree', (readonly string[])?];

/** A table the plugin writes: its name, `[column, ClickHouse type]` pairs and layout. */
export class Table<const C extends Columns = Columns> {
  constructor(
    name: string,
    columns: C,
    options?: {
      engine?: Engine;
      partitionBy?: string;
      orderBy?: string[];
      settings?: [string, string][];
      comments?: { [column: string]: string };
    },
  );
  readonly name: string;
  readonly columns: C;
}

/** Collects the rows of a batch. */
export class Output {
  constructor(tables: Table[]);
  /** Emits one row of `table` for the current event. */
  row<C extends Columns>(table: Table<C>, values: Row<C>): void;
}

/** What a plugin is: name, version, subscriptions, tables, and the handler. */
export interface Plugin {
  name: string;
  version: string;
  subscriptions: string[];
  tables: Table<any>[];
  handle(event: Event, out: Output): void;
  /** Set by `exportPlugin`: the sidecar's `[settings]` value for `key`. */
  config?: (key: string) => string | undefined;
  /** Set by `exportPlugin`: a log line through the host. */
  log?: (level: 'trace' | 'debug' | 'info' | 'warn' | 'error', message: string, fields?: { [k: string]: unknown }) => void;
}

/** Runs a batch as the host would (unit tests): packed rows and `[index, Failure]` pairs. */
export function runBatch(plugin: Plugin, events: Event[]): { rows: Uint8Array; failures: [number, Failure][] };
export function runJson(plugin: Plugin, payloads: string, events: string): { rowsJson: Uint8Array; rows: Uint8Array; failures: [number, Failure][] };

/** The `handler` export of the component. */
export function exportPlugin(
  plugin: Plugin,
  host: {
    log(level: 'trace' | 'debug' | 'info' | 'warn' | 'error', message: string, fields: Array<[string, string]>): void;
    configGet(key: string): string | undefined;
  },
): {
  describe(): any;
  handleJson(payloads: string, events: string): { rows: Uint8Array; rowsJson: Uint8Array; failures: { event: number; kind: 'permanent' | 'transient'; message: string }[] };
};
