// Runs Segment's own Segment Profiles destination on records given as JSON lines, for the differential
// test (tests/test_differential_segment.py).
//
// Input, one JSON object per line on stdin:
//   {"id": <any>, "action": "sendIdentify" | "sendGroup" | "sendTrack" | "sendSubscription",
//    "mapping": <Segment mapping, @path directives into the event>, "event": <partial Segment event>}
// Output, one JSON object per input line on stdout, in input order:
//   {"id": ..., "ok": true, "batch": [<message>, ...]}                      perform's { batch }
//   {"id": ..., "ok": false, "error": "<message>", "name": "...", "code": "...", "pointers": ["/traits"]}
// The first output line is {"versions": {...}}: the installed versions of Segment's packages.
//
// createTestIntegration(...).testAction runs the whole action pipeline of @segment/actions-core
// (mapping-kit transform, removeEmptyValues, Ajv validation with coercion, then perform). The
// destination's perform returns the batch it would hand to Segment's tracking API and sends no request;
// the request client is still replaced by one that fails, so nothing can reach the network.
'use strict'

const fs = require('node:fs')
const path = require('node:path')
const readline = require('node:readline')
const { createTestIntegration } = require('@segment/actions-core')
const destination = require('@segment/action-destinations/dist/destinations/segment-profiles').default

const integration = createTestIntegration(destination)
integration.createRequestClient = () => {
  const refuse = async (url) => {
    throw new Error(`the differential harness makes no HTTP requests (asked for ${url})`)
  }
  return refuse
}

function versions() {
  const found = {}
  for (const name of ['@segment/action-destinations', '@segment/actions-core', 'ajv', 'dayjs']) {
    const file = path.join(__dirname, 'node_modules', name, 'package.json')
    found[name] = JSON.parse(fs.readFileSync(file, 'utf8')).version
  }
  found.node = process.versions.node
  return found
}

function describeError(error) {
  const described = {
    ok: false,
    error: String(error && error.message),
    name: error && error.name,
    code: error && error.code
  }
  if (error && Array.isArray(error.errors)) {
    described.pointers = error.errors.map((item) => item.pointer)
  }
  return described
}

async function runOne(line) {
  const input = JSON.parse(line)
  try {
    await integration.testAction(input.action, {
      event: input.event,
      mapping: input.mapping,
      settings: {}
    })
    const executed = integration.results.find((result) => result && result.output === 'Action Executed')
    return { id: input.id, ok: true, batch: executed.data.batch }
  } catch (error) {
    return { id: input.id, ...describeError(error) }
  }
}

async function main() {
  const out = []
  const flush = () => {
    if (out.length) {
      process.stdout.write(out.join('\n') + '\n')
      out.length = 0
    }
  }
  process.stdout.write(JSON.stringify({ versions: versions() }) + '\n')
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  for await (const line of lines) {
    if (!line.trim()) continue
    out.push(JSON.stringify(await runOne(line)))
    if (out.length >= 200) flush()
  }
  flush()
}

main().catch((error) => {
  process.stderr.write(`harness failed: ${error && error.stack}\n`)
  process.exit(1)
})
