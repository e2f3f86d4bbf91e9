import { defineConfig } from "vite";

// Built by controlplane/build.rs into the binary; asset names carry a content hash, so the
// control plane serves them as immutable.
export default defineConfig({
  base: "/",
  build: {
    target: "es2022",
    assetsDir: "assets",
    chunkSizeWarningLimit: 600,
  },
});
