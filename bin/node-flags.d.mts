/** Cores this process may run on (CPU affinity, and the cgroup quota where libuv sees it). */
export declare const availableCores: () => number
/** The daemon's Node flags for `cores` (default: this process's available cores). */
export declare const daemonNodeFlags: (cores?: number) => Array<string>
