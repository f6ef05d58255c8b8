// Bundles the views (one ES module + CSS) and the static-report host into python/circuitboard/static/.
import * as esbuild from "esbuild";

const outdir = "../python/circuitboard/static";
const watch = process.argv.includes("--watch");
const common = { bundle: true, minify: !watch, target: "es2022", logLevel: "info", legalComments: "none" };
const builds = [
  { ...common, entryPoints: { index: "src/index.ts" }, format: "esm", outdir },
  { ...common, entryPoints: { index: "src/style.css" }, outdir },
  { ...common, entryPoints: { host: "src/host.ts" }, format: "iife", outdir },
];
if (watch) {
  for (const b of builds) await (await esbuild.context(b)).watch();
} else {
  await Promise.all(builds.map((b) => esbuild.build(b)));
}
