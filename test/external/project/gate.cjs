// A CommonJS project's use of tokengate: require() of the ES module package (Node.js 20.19+), then the scenario.
const { tokenGate, createStorage, proxy, StorageError, ConfigError, statsHandler } = require('tokengate');
const scenario = require('./scenario.cjs');

scenario({ tokenGate, createStorage, proxy, StorageError, ConfigError, statsHandler }).catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
