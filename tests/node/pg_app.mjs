// An Express app over node-postgres, instrumented by the real OpenTelemetry http, express and pg
// instrumentations, exporting spans over OTLP/HTTP (protobuf) to vitals.
//
// node pg_app.mjs --pg URL --endpoint http://127.0.0.1:PORT --loop N --batch M
//
// /items/loop fetches 20 items with one query per item (the N+1); /items/batch fetches the same 20 with
// one query. Items come from the `books` view the Python ORM app creates (4 ms per query). The script
// requests each endpoint N and M times, flushes the SDK and prints the trace ids of each as JSON.
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { registerInstrumentations } from '@opentelemetry/instrumentation';
import { HttpInstrumentation } from '@opentelemetry/instrumentation-http';
import { ExpressInstrumentation } from '@opentelemetry/instrumentation-express';
import { PgInstrumentation } from '@opentelemetry/instrumentation-pg';

const { values: a } = parseArgs({
  options: {
    pg: { type: 'string' },
    endpoint: { type: 'string' },
    loop: { type: 'string', default: '1' },
    batch: { type: 'string', default: '1' },
  },
});

context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
const tp = new TracerProvider({
  resource: resourceFromAttributes({ 'service.name': 'express-shop' }),
  spanProcessors: [new BatchSpanProcessor({ exporter: new OTLPTraceExporter({ url: `${a.endpoint}/v1/traces` }), scheduledDelayMillis: 200 })],
});
trace.setGlobalTracerProvider(tp);
registerInstrumentations({
  tracerProvider: tp,
  instrumentations: [new HttpInstrumentation(), new ExpressInstrumentation(), new PgInstrumentation()],
});
// CommonJS modules loaded after the instrumentations are registered, so their hooks apply.
const require = createRequire(import.meta.url);
const express = require('express');
const pg = require('pg');

const pool = new pg.Pool({ connectionString: a.pg, max: 4 });
const ids = [];
for (let author = 1; author <= 10; author++) for (let b = 0; b < 2; b++) ids.push(author * 100 + b);
const seen = { loop: [], batch: [] };
const app = express();
app.get('/items/loop', async (req, res) => {
  seen.loop.push(trace.getActiveSpan().spanContext().traceId);
  const out = [];
  for (const id of ids) {
    const r = await pool.query('SELECT id, title FROM books WHERE id = $1', [id]);
    out.push(r.rows[0]);
  }
  res.json(out);
});
app.get('/items/batch', async (req, res) => {
  seen.batch.push(trace.getActiveSpan().spanContext().traceId);
  const r = await pool.query('SELECT id, title FROM books WHERE id = ANY($1) ORDER BY id', [ids]);
  res.json(r.rows);
});

const server = await new Promise((resolve) => {
  const s = app.listen(0, '127.0.0.1', () => resolve(s));
});
const base = `http://127.0.0.1:${server.address().port}`;
for (const [path, n] of [['/items/loop', Number(a.loop)], ['/items/batch', Number(a.batch)]]) {
  for (let i = 0; i < n; i++) {
    const r = await fetch(base + path);
    const body = await r.json();
    if (body.length !== ids.length) throw new Error(`${path}: ${body.length} items`);
  }
}
server.close();
await pool.end();
await tp.forceFlush();
await tp.shutdown();
process.stdout.write(JSON.stringify(seen));
