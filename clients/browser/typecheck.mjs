// Type checks with the TypeScript compiler (a pinned dev dependency): our sources under
// `strict`; lkedge.d.mts against them (typecheck/conformance.ts); and a page's code with
// nothing but lkedge.d.mts (typecheck/page.ts). livekit-client's own sources, which the
// first two compile through, are its build's business: they are not checked.
// Exit 1 with the diagnostics when anything of ours fails.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const here = path.dirname(fileURLToPath(import.meta.url));
const base = {
  target: ts.ScriptTarget.ES2020,
  module: ts.ModuleKind.ESNext,
  moduleResolution: ts.ModuleResolutionKind.Bundler,
  lib: ['lib.es2022.d.ts', 'lib.dom.d.ts', 'lib.dom.iterable.d.ts', 'lib.dom.asynciterable.d.ts'],
  strict: true,
  noEmit: true,
  skipLibCheck: false,
  skipDefaultLibCheck: true,
  types: [],
};

function check(name, roots, options) {
  const program = ts.createProgram(roots.map((r) => path.join(here, r)), { ...base, ...options });
  // only our files are asked for (the checker then looks into livekit-client's only as
  // far as our files' types need: a fraction of checking all of it)
  const ours = [...program.getOptionsDiagnostics(), ...program.getGlobalDiagnostics()];
  for (const file of program.getSourceFiles()) {
    if (file.fileName.includes('/node_modules/') || program.isSourceFileDefaultLibrary(file)) continue;
    ours.push(...program.getSyntacticDiagnostics(file), ...program.getSemanticDiagnostics(file));
  }
  const host = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => here, getNewLine: () => '\n' };
  if (ours.length) console.log(ts.formatDiagnostics(ours, host));
  console.log(`${name}: ${ours.length ? `${ours.length} error(s)` : 'ok'} (${program.getSourceFiles().length} files)`);
  return ours.length === 0;
}

const results = [
  // 'events' (the EventEmitter livekit-client bundles) is typed by @types/events
  // (declaration files are checked in the second: here only how they are used)
  check('sources and declarations', ['src/index.ts', 'typecheck/conformance.ts'], {
    types: ['events'],
    skipLibCheck: true,
  }),
  check('a page with the declarations alone', ['typecheck/page.ts'], {}),
];
process.exit(results.every(Boolean) ? 0 : 1);
