/** The daemon's Node flags (`npm start`, `khala serve`, the tests and the benchmark). */
export declare const daemonNodeFlags: ReadonlyArray<string>
