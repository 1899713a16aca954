// The `pg` npm client against sluice's Postgres wire server: connect (SCRAM), run a plain and a
// parameterised query, print one JSON document with what came back.
// usage: node pg_clients.cjs HOST PORT USER PASSWORD
const { Client } = require('pg');

async function main() {
  const [host, port, user, password] = process.argv.slice(2);
  const client = new Client({ host, port: Number(port), user, password, database: 'sluice' });
  await client.connect();
  const out = {};
  const count = await client.query('SELECT count(*) AS n FROM events');
  out.count = Number(count.rows[0].n);
  const byId = await client.query('SELECT event, user_id FROM events WHERE event_id = $1', ['e-3']);
  out.by_id = [byId.rows[0].event, byId.rows[0].user_id];
  const typed = await client.query('SELECT plan, count(*) AS n FROM signed_up GROUP BY plan ORDER BY plan');
  out.typed = typed.rows.map((r) => [r.plan, Number(r.n)]);
  try {
    await client.query("INSERT INTO events (event_id) VALUES ('x')");
    out.insert = 'allowed';
  } catch (e) {
    out.insert = e.code;
  }
  await client.end();
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
