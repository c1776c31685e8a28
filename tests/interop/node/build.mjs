// Bundles the interop peer (and its in-process self-test) with esbuild into build/*.cjs.
// Its packages are the browser client's (clients/browser: one lockfile, one install): the
// peer is that client's LINK.md connection and livekit-client wiring on TCP, plus the
// command layer the tests drive. livekit-client's TypeScript sources are bundled as they
// ship in clients/browser/node_modules.
import { createRequire } from 'module';
import { fileURLToPath } from 'url';
import * as path from 'path';

const here = path.dirname(fileURLToPath(import.meta.url));
const clientDir = path.resolve(here, '../../../clients/browser');
const { build } = createRequire(path.join(clientDir, 'package.json'))('esbuild');

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  sourcemap: 'inline',
  logLevel: 'warning',
  absWorkingDir: here,
  // bare imports of this folder's sources (@livekit/protocol) resolve in the client's packages
  nodePaths: [path.join(clientDir, 'node_modules')],
};

await build({ ...common, entryPoints: ['src/main.ts'], outfile: 'build/peer.cjs' });
await build({ ...common, entryPoints: ['src/selftest.ts'], outfile: 'build/selftest.cjs' });
await build({ ...common, entryPoints: ['src/testrelay_main.ts'], outfile: 'build/testrelay.cjs' });
