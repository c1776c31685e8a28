// Bundles the interop peer (and its in-process self-test) with esbuild into build/*.cjs.
// livekit-client's TypeScript sources are bundled as they ship in node_modules.
import { build } from 'esbuild';

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  sourcemap: 'inline',
  logLevel: 'warning',
};

await build({ ...common, entryPoints: ['src/main.ts'], outfile: 'build/peer.cjs' });
await build({ ...common, entryPoints: ['src/selftest.ts'], outfile: 'build/selftest.cjs' });
await build({ ...common, entryPoints: ['src/testrelay_main.ts'], outfile: 'build/testrelay.cjs' });
