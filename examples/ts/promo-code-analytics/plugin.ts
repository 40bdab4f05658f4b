// The component's entry module: the only one that imports the host interface. Its export is
// checked against the contract's `handler` interface (types generated from the WIT).
import * as host from 'sluice:plugin/host@0.2.0';
import type * as Handler from 'sluice:plugin/handler@0.2.0';
import { exportPlugin } from '../../../sdk/js/sluice_sdk.js';
import { plugin } from './handler.js';

export const handler: typeof Handler = exportPlugin(plugin, host);
