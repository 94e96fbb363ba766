// The postgres.js that tokengate connects with: the copy in dist/vendor/postgres that carries the fix in .patches/ (see .ci/build.js).
import type Postgres from 'postgres';
import driver from '#postgres';

/** postgres.js's `postgres()`, typed by the `postgres` package the copy was made from. */
export const postgres: typeof Postgres = driver;
