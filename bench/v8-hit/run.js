// node --no-liftoff bench/v8-hit/run.js HIT_LOOP.wasm N MODE
// Runs hit_loop (a miss, then N warm hits) in V8 through WASI and prints the wall time
// of the whole run on stderr. The difference between N and 0 over N is one hit.
'use strict';
const { WASI } = require('node:wasi');
const fs = require('fs');
const [wasmPath, n, mode] = process.argv.slice(2);
const mod = new WebAssembly.Module(fs.readFileSync(wasmPath));
const wasi = new WASI({ version: 'preview1', args: ['hit_loop', n, mode || 'CLIENT'], env: {}, returnOnExit: true });
const imports = wasi.getImportObject();
// The filter's proxy-wasm imports are linked but never called: hit_loop's stub is the host.
for (const imp of WebAssembly.Module.imports(mod)) {
  if (imp.module !== 'wasi_snapshot_preview1') {
    imports[imp.module] = imports[imp.module] || {};
    imports[imp.module][imp.name] = () => { throw new Error('unexpected host call ' + imp.name); };
  }
}
const inst = new WebAssembly.Instance(mod, imports);
const t0 = process.hrtime.bigint();
// The filter's library exports proxy-wasm's _initialize beside the binary's _start,
// which WASI.start refuses: hand it the two exports it needs.
const code = wasi.start({ exports: { memory: inst.exports.memory, _start: inst.exports._start } });
const t1 = process.hrtime.bigint();
if (code !== 0) {
  console.error(`hit_loop exited ${code}`);
  process.exit(1);
}
console.error(`WALL_NS ${t1 - t0}`);
