// A database connection that dies while postgres.js has a write waiting, with the postgres.js at the file URL given as argument (porsager/postgres#1208).
// An unfixed driver throws "Cannot read properties of null (reading 'write')" from a setImmediate and the process dies;
// a fixed one fails the transaction with CONNECTION_CLOSED, and this prints it.
const { default: postgres } = await import(process.argv[2]);

const sql = postgres(process.env.DATABASE_URL, { max: 1, onnotice: () => undefined });
const killer = postgres(process.env.DATABASE_URL, { max: 1, onnotice: () => undefined });
let pid;
const transaction = sql.begin(async (tx) => {
  [{ pid }] = await tx`select pg_backend_pid() as pid`;
  await tx`select pg_sleep(5)`; // in flight when the backend is terminated; the ROLLBACK that follows is the waiting write
});
const outcome = transaction.then(() => 'committed', (error) => error.code ?? error.message);
while (pid === undefined) await new Promise((resolve) => setTimeout(resolve, 10));
await killer`select pg_terminate_backend(${pid})`;
console.log(await outcome);
// Long enough for the crash, which comes from a setImmediate, to happen if it is going to.
await new Promise((resolve) => setTimeout(resolve, 200));
await killer.end();
process.exit(0); // the fixed driver keeps the dead connection's ending pending; nothing more to learn from it
