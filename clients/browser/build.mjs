// Bundles the browser client with esbuild into dist/lkedge.mjs: one ES module with
// livekit-client's RPC and data-stream managers (from its TypeScript sources as they ship
// in node_modules) and their dependencies, nothing else of livekit-client (no WebRTC).
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
