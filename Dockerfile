# syntax=docker/dockerfile:1
# The tokengate sidecar image: compiled with dev dependencies, run with production ones only, as a non-root user.

# ---- build: TypeScript to dist/, better-sqlite3 compiled, then dev dependencies pruned ----
FROM node:20-slim AS build
# better-sqlite3 compiles native code when no prebuilt binary fits.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
COPY .patches ./.patches
# Scripts are skipped here (prepare would build before the sources are in); the native module is
# built explicitly, and the postgres.js fix applied by patch-package as `npm ci` would.
RUN npm ci --ignore-scripts \
 && npm rebuild better-sqlite3 \
 && npx patch-package --patch-dir .patches
COPY tsconfig.json tsconfig.build.json ./
# The build script also copies the fixed postgres.js into dist/vendor/postgres (checked against .patches).
COPY .ci/build.js ./.ci/build.js
COPY src ./src
COPY middleware ./middleware
RUN npm run build && npm prune --omit=dev

# ---- runtime ----
FROM node:20-slim
ENV NODE_ENV=production \
    PORT=8080 \
    HOST=0.0.0.0 \
    DATABASE_PATH=/data/tokengate.db \
    FALLBACK_DIR=/data/fallback \
    BACKUP_DIR=/data/backups
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY drizzle ./drizzle
# The SQLite file, the fallback journal and the backups live on the volume, writable by the unprivileged user.
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 8080
# No curl in slim images: node itself asks /healthz (200 ok or degraded, 503 unhealthy).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# tokengate handles SIGTERM itself (graceful drain), so node runs as PID 1 without a shell in between.
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["serve"]
