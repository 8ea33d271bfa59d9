import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Each file gets its own database; two cores, so keep the file concurrency modest.
    maxWorkers: 2,
    reporters: ["default"]
  }
})
