// Bundles the browser client with esbuild into dist/lkedge.mjs: one ES module with
// livekit-client's RPC and data-stream managers (from its TypeScript sources as they ship
// in node_modules) and their dependencies, nothing else of livekit-client (no WebRTC).
// Its type declarations go beside it as dist/lkedge.d.mts (written by hand in
// lkedge.d.mts, checked against the sources by typecheck.mjs).
import { copyFile } from 'node:fs/promises';
import { build } from 'esbuild';

await build({
  entryPoints: ['src/index.ts'],
  outfile: 'dist/lkedge.mjs',
  bundle: true,
  platform: 'browser',
  format: 'esm',
  target: 'es2020',
  sourcemap: 'linked',
  logLevel: 'warning',
});
await copyFile('lkedge.d.mts', 'dist/lkedge.d.mts');
