// An ES module project's use of tokengate: named imports, then the scenario.
import { tokenGate, createStorage, proxy, StorageError, ConfigError, statsHandler } from 'tokengate';
import scenario from './scenario.cjs';

await scenario({ tokenGate, createStorage, proxy, StorageError, ConfigError, statsHandler });
